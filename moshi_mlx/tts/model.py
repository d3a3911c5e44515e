"""A DSM TTS model ready to speak: the LM, its text tokenizer, its state machine and its settings.

Read off Kyutai's config as its `TTSModel.from_checkpoint_info` reads it (moshi 0.2.13): the audio delay in steps
(`tts_config.audio_delay` x 12.5 Hz), `second_stream_ahead`, `max_speakers` (5 when unset), the voice file suffix
from `model_id`, and whether CFG is a condition (a `cfg` lut conditioner: the model was distilled for it) or a
second pass in the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..errors import MoshiError
from ..model.config import LmConfig
from ..model.lm import Lm
from ..model.weights import load_lm
from .conditions import DEFAULT_MAX_SPEAKERS, Conditions, cfg_values, is_multi_speaker, make_attributes, prepare
from .generate import TtsGen
from .script import FRAME_RATE, Entry, TokenIds, script_to_entries
from .state_machine import StateMachine
from .voices import load_voice

DEFAULT_REPO = "kyutai/tts-1.6b-en_fr"
GROUP_SIZE = 64


def quantize_like_kyutai(lm: Lm, bits: int) -> None:
    """Quantize as Kyutai's `run_tts --quantize` does: the depth transformer, and the temporal layers' attention
    and MLP (projections whose width the group size does not divide stay as they are)."""
    def fits(path: str, module: nn.Module) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % GROUP_SIZE == 0

    nn.quantize(lm.depformer, group_size=GROUP_SIZE, bits=bits, class_predicate=fits)
    for layer in lm.transformer.layers:
        nn.quantize(layer.self_attn, group_size=GROUP_SIZE, bits=bits, class_predicate=fits)
        nn.quantize(layer.gating, group_size=GROUP_SIZE, bits=bits, class_predicate=fits)
    mx.eval(lm.parameters())


def check_tts_config(config: LmConfig) -> None:
    """One line when a config is not a DSM TTS model's."""
    if not config.tts_config or "audio_delay" not in config.tts_config:
        raise MoshiError("this model is not a text-to-speech model (its config has no tts_config.audio_delay): "
                         f"use a TTS model, e.g. --hf-repo {DEFAULT_REPO}")
    if config.dep_q != config.n_q:
        raise MoshiError(f"this TTS config generates {config.dep_q} of its {config.n_q} audio streams; "
                         "only models generating all of them are supported")


@dataclass
class TtsModel:
    lm: Lm
    tokenizer: Any  # SentencePiece
    max_padding: int = 8
    initial_padding: int = 2

    def __post_init__(self) -> None:
        cfg = self.lm.config
        check_tts_config(cfg)
        self.token_ids = TokenIds(cfg.text_card + 1)
        self.delay_steps = int(float(cfg.tts_config["audio_delay"]) * FRAME_RATE)
        self.machine = StateMachine(self.token_ids, int(cfg.tts_config.get("second_stream_ahead", 0)),
                                    self.max_padding, self.initial_padding)
        self.max_speakers = int(cfg.tts_config.get("max_speakers", DEFAULT_MAX_SPEAKERS))

    @classmethod
    def load(cls, weights: str | Path, config: LmConfig, tokenizer: Any, dtype: mx.Dtype = mx.bfloat16) -> TtsModel:
        check_tts_config(config)
        return cls(load_lm(weights, config, dtype=dtype), tokenizer)

    @property
    def config(self) -> LmConfig:
        return self.lm.config

    @property
    def multi_speaker(self) -> bool:
        return is_multi_speaker(self.lm)

    @property
    def cfg_values(self) -> list[float]:
        return cfg_values(self.lm)

    def entries(self, turns: list[str], padding_between: int = 1) -> list[Entry]:
        """The script's entries; a word the tokenizer cannot encode is a one-line error."""
        def encode(word: str) -> list[int]:
            tokens = self.tokenizer.encode(word)
            unknown = self.tokenizer.unk_id()
            if not tokens or unknown in tokens or any(t >= self.config.text_card for t in tokens):
                raise MoshiError(f"the text tokenizer cannot encode {word!r}: leave out the characters it does "
                                 "not know (or use a model whose tokenizer knows them)")
            return tokens

        entries = script_to_entries(encode, self.token_ids, turns, self.multi_speaker, padding_between)
        if not any(e.tokens for e in entries):
            raise MoshiError("nothing to say: the text has no words")
        return entries

    def load_voices(self, paths: list[Path]) -> list[mx.array]:
        provider = self.lm.get("condition_provider")
        dim = provider.tensor_dim("speaker_wavs") if self.multi_speaker else 0
        return [load_voice(p, self.config.model_id, dim) for p in paths]

    def conditions(self, voices: list[mx.array], cfg_coef: float) -> tuple[Conditions, float]:
        """The prepared conditions and the CFG coefficient left for the generator (1 when CFG is a condition)."""
        distilled = bool(self.cfg_values)
        attributes = [make_attributes(self.lm, voices, cfg_coef if distilled else None, self.max_speakers)]
        gen_coef = 1.0 if distilled else cfg_coef
        if gen_coef != 1.0:
            attributes.append(attributes[0].dropped())
        return prepare(self.lm, attributes), gen_coef

    def generator(self, cfg_coef: float, temp: float = 0.6, seed: int | None = None, n_q: int | None = None,
                  padding_bonus: float = 0.0) -> TtsGen:
        """A generator; `cfg_coef` as `conditions` returned it."""
        distilled = bool(self.cfg_values)
        return TtsGen(self.lm, self.machine, self.delay_steps, temp=temp, cfg_coef=cfg_coef,
                      cfg_is_no_text=not distilled, cfg_is_no_prefix=not distilled, padding_bonus=padding_bonus,
                      n_q=n_q, seed=seed)
