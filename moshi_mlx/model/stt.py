"""Streaming speech-to-text (Kyutai's STT: `dep_q` 0): the audio forced, the text sampled, as Kyutai's PyTorch
`LMGen.step` and `step_with_extra_heads` do for a model without a depth transformer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import MoshiError
from .config import LmConfig
from .generate import LmGen, PendingStep, StepOutput
from .kinds import model_kind
from .lm import Lm
from .persona_gen import PersonaGen
from .stt_checks import stt_seconds

# Kyutai's microphone scripts end a turn when head 2's first class passes 0.5 (delayed-streams-modeling,
# scripts/stt_from_mic_mlx.py: `vad_heads[2][0, 0, 0] > 0.5`).
END_OF_TURN_HEAD = 2
END_OF_TURN_THRESHOLD = 0.5


@dataclass
class SttPendingStep(PendingStep):
    """A submitted STT step: the text token and, for a model with extra heads, their probabilities (on the device)."""

    extra_heads: mx.array | None = None


class SttGen(LmGen):
    """`LmGen` for a text-only model (`dep_q` 0): the user's `n_q` Mimi codes in, the text token out, and the extra
    heads' probabilities (`StepOutput.extra_heads`) when the model has them, read in the step's one host sync.

    Greedy by default (temperature 0), as Kyutai runs its STT models; no depth-transformer work. The temporal
    transformer runs as `LmGen`'s compiled segments; the last one samples the text and applies the extra heads.

    `repeat_first_frame` does what Kyutai's `run_inference` does with the first frame (it steps it twice): step 0
    sees only start tokens whatever it is given, so one model step runs before the first frame (on the device, no
    sync) and the first frame is heard at the next; the output for frame t then comes from frames 0..t. Without it
    the steps are exactly `LMGen.step`'s, where frame 0 is never heard.
    """

    def __init__(
        self,
        lm: Lm,
        temp_text: float = 0.0,
        top_k_text: int = 25,
        seed: int | None = None,
        compile: bool = True,
        repeat_first_frame: bool = True,
    ):
        if lm.config.dep_q != 0:
            raise ValueError(f"SttGen runs text-only models (dep_q 0), not dep_q {lm.config.dep_q}: use LmGen")
        self.repeat_first_frame = repeat_first_frame
        self.has_extra_heads = lm.config.extra_heads_num_heads > 0
        super().__init__(lm, temp=0.0, temp_text=temp_text, top_k=1, top_k_text=top_k_text, seed=seed,
                         compile=compile)

    def reset(self) -> None:
        super().reset()
        self._model_step = 0  # steps of the model: one more than the frames once the first frame is repeated

    # The last compiled segment: the text token, and the extra heads' probabilities from the same hidden state.
    def _last_segment(self, x: mx.array, attention: mx.array) -> tuple[mx.array, ...]:
        hidden, text = self._text_segment(x, attention)
        return (text, self.lm.extra_head_probs(hidden)) if self.has_extra_heads else (text,)

    def _input_tokens(self) -> list[int | mx.array]:
        t, tokens = self._model_step, []
        for k, d in enumerate(self.cfg.delays):
            if t <= d:
                tokens.append(self._starts[k])
            elif k == 0:
                tokens.append(self._last)  # the text token sampled at the last step, on the device
            else:
                tokens.append(int(self._user[-1 - d][k - 1]))
        return tokens

    def submit(self, user_codes: Any) -> SttPendingStep:
        """Build this frame's step and start it on the device; `collect` reads its text token (and heads)."""
        tokens = self._take_user(user_codes)
        if self._model_step == 0 and self.repeat_first_frame:
            self._last = self._segments[-1](*self._through_layers(tokens))[0]
            self._model_step = 1
            tokens = self._input_tokens()
        outputs = self._segments[-1](*self._through_layers(tokens))
        mx.async_eval(*outputs, mx.random.state)
        return self._pending(outputs[0], outputs[1] if self.has_extra_heads else None)

    def collect(self, pending: PendingStep) -> StepOutput:
        """Wait for a submitted step and read its text token and extra heads: the step's one host sync."""
        heads = pending.extra_heads if isinstance(pending, SttPendingStep) else None
        out = self._collect(pending, [heads] if heads is not None else [])
        out.audio_codes = None
        out.extra_heads = np.array(heads) if heads is not None else None
        return out

    def step_forced(self, user_codes: Any, text: int | None = None, audio: Any = None) -> StepOutput:
        """`step` through the uncompiled model, with the text logits; `text` replaces the sampled token."""
        if audio is not None:
            raise ValueError("a speech-to-text model generates no audio to force")
        if self._collected != self.step_index:
            raise RuntimeError("collect the submitted steps before a forced step")
        tokens = self._take_user(user_codes)
        if self._model_step == 0 and self.repeat_first_frame:
            self._last = self.sample_text(self._forward(tokens)[1]).astype(mx.int32).reshape(1)
            self._model_step = 1
            tokens = self._input_tokens()
        hidden, logits = self._forward(tokens)
        sampled = self.sample_text(logits) if text is None else mx.array([int(text)])
        heads = self.lm.extra_head_probs(hidden) if self.has_extra_heads else None
        out = self.collect(self._pending(sampled.astype(mx.int32).reshape(1), heads))
        out.text_logits = np.array(logits[0])
        return out

    def _forward(self, tokens: list[int | mx.array]) -> tuple[mx.array, mx.array]:
        """One uncompiled step of the temporal transformer: the normed hidden state `[1, dim]`, text logits."""
        inputs = mx.concatenate([
            tok if isinstance(tok, mx.array) else mx.array([tok], dtype=mx.int32) for tok in tokens
        ]).reshape(1, -1, 1)
        hidden, logits = self.lm.temporal(inputs, self.cache)
        return hidden[:, -1], logits[:, -1].astype(mx.float32)

    def _pending(self, text: mx.array, heads: mx.array | None) -> SttPendingStep:
        return SttPendingStep(self._submitted(text).index, text, heads)

    def _submitted(self, generated: mx.array) -> PendingStep:
        self._model_step += 1
        return super()._submitted(generated)

    def _run_depth(
        self, hidden: mx.array, text: mx.array, forced: Any = None, masked: bool = True
    ) -> tuple[mx.array, mx.array]:
        """No depth transformer: no audio tokens (so that `LmGen`'s pieces, e.g. bench's profiler, still fit)."""
        return mx.zeros((0,), mx.int32), mx.zeros((0, self.cfg.card), mx.float32)


def end_of_turn(extra_heads: np.ndarray | None, threshold: float = END_OF_TURN_THRESHOLD) -> bool:
    """Whether a step's extra heads say the speaker finished their turn (Kyutai's semantic voice activity)."""
    return extra_heads is not None and extra_heads.shape[0] > END_OF_TURN_HEAD and \
        float(extra_heads[END_OF_TURN_HEAD, 0]) > threshold


def is_stt(config: LmConfig) -> bool:
    """A speech-to-text model: text only (`dep_q` 0; Kyutai's STT configs also say `model_type` "stt")."""
    return config.dep_q == 0


def stt_delays(config: LmConfig) -> tuple[float, float]:
    """`(audio_delay_seconds, audio_silence_prefix_seconds)` of the config's `stt_config` (0 when left out)."""
    return stt_seconds(config.stt_config)


def check_model_kind(config: LmConfig, stt: bool, source: str = "the model") -> None:
    """One-line `MoshiError` when `config` is not the kind of model asked for (speech-to-text or conversation)."""
    if stt and model_kind(config) == "tts":
        raise MoshiError(f"{source} is a text-to-speech model, not speech-to-text: use `moshi-mlx say` with it, or "
                         "give an STT model (--model stt-1b or stt-2.6b)")
    if stt and not is_stt(config):
        raise MoshiError(f"{source} is a conversation model (Moshi, dep_q {config.dep_q}), not speech-to-text: "
                         "give an STT model (--model stt-1b or stt-2.6b) or use `moshi-mlx chat`")
    if not stt and is_stt(config):
        raise MoshiError(f"{source} is a speech-to-text model (no voice of its own): use `moshi-mlx transcribe`")


def make_generator(
    lm: Lm,
    temp: float = 0.8,
    temp_text: float = 0.7,
    top_k: int = 250,
    top_k_text: int = 25,
    seed: int | None = None,
) -> LmGen:
    """The generator of a loaded model: `SttGen` for a text-only one (the audio settings unused), else `LmGen`."""
    if is_stt(lm.config):
        return SttGen(lm, temp_text=temp_text, top_k_text=top_k_text, seed=seed)
    if lm.config.takes_persona:  # NVIDIA's PersonaPlex semantics (persona_gen.py)
        return PersonaGen(lm, temp=temp, temp_text=temp_text, top_k=top_k, top_k_text=top_k_text, seed=seed)
    return LmGen(lm, temp=temp, temp_text=temp_text, top_k=top_k, top_k_text=top_k_text, seed=seed)
