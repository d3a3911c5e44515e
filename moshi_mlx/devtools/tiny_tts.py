"""A tiny random TTS model on disk, in the structure of Kyutai's `tts-1.6b-en_fr` (for tests and benchmarks).

Every stream generated, delays [0, 0, 2, ...], a second text stream multiplexed into the first, low-rank depth
embeddings with a weight schedule, cross-attention onto speaker embeddings, `control` and `cfg` conditioners, and
a voice file named and stamped as Kyutai's are (`<name>.<sig>@<epoch>.safetensors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from ..model.config import LmConfig
from .random_lm import tiny_config, write_random_lm
from .random_mimi import write_random_mimi
from .tiny_tokenizer import write_tiny_tokenizer

MODEL_ID = {"sig": "0123abcd", "epoch": 1}
VOICE_NAME = "tiny-voice"
VOICE_DIM = 16
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
# `kyutai/tts-1.6b-en_fr`'s config.json (model_id 1e68beda@240), as a public mirror of it records it.
TTS_1_6B: dict[str, Any] = {
    "card": 2048, "n_q": 32, "dep_q": 32, "delays": [0, 0] + [2] * 31, "dim": 2048, "text_card": 8000,
    "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 500, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 4,
    "depformer_dim_feedforward": 3072, "depformer_multi_linear": True, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8
    + [10] * 8, "depformer_low_rank_embeddings": 128, "demux_second_stream": True, "text_card_out": None,
    "cross_attention": True,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop",
                                       "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]}},
        "control": {"type": "lut", "lut": {"dim": 2048, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    "fuser": {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
              "prepend": [], "cross": ["speaker_wavs"]},
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2}, "model_id": {"sig": "1e68beda", "epoch": 240},
    "model_type": "tts", "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
}
# `kyutai/tts-0.75b-en-public` (model_id d6ef30c7@1000), as far as public sources give it (docs/tts.md says which
# value comes from where; the layout, conditioners and schedule are inferred, not read from its config.json).
TTS_0_75B: dict[str, Any] = {
    **TTS_1_6B, "n_q": 16, "dep_q": 16, "delays": [0, 0] + [2] * 15, "dim": 1024, "num_layers": 24,
    "text_card_out": 5, "cross_attention": False, "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8,
    "conditioners": {
        "control": {"type": "lut", "lut": {"dim": 1024, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]}},
    },
    "fuser": {"sum": ["control"], "prepend": [], "cross": []},
    "model_id": {"sig": "d6ef30c7", "epoch": 1000},
}


def tiny_tts_config(n_q: int = 8, **overrides: Any) -> LmConfig:
    """The 1.6B TTS structure with tiny dimensions (audio delay 0.32 s: 4 steps)."""
    values: dict[str, Any] = dict(
        n_q=n_q, dep_q=n_q, delays=[0, 0] + [2] * (n_q - 1), card=2048, text_card=64, dim=32, num_heads=2,
        num_layers=2, context=50, depformer_dim=16, depformer_num_heads=2, depformer_num_layers=2,
        depformer_dim_feedforward=24, depformer_weights_per_step_schedule=[min(k, 3) for k in range(n_q)],
        depformer_low_rank_embeddings=8, demux_second_stream=True, cross_attention=True,
        conditioners={
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": VOICE_DIM}},
            "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 8, "tokenizer": "noop", "possible_values": CFG_VALUES}},
            "control": {"type": "lut", "lut": {"n_bins": 1, "dim": 32, "tokenizer": "noop", "possible_values": ["ok"]}},
        },
        fuser={"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1, "sum": ["control", "cfg"],
               "prepend": [], "cross": ["speaker_wavs"]},
        tts_config={"audio_delay": 0.32, "second_stream_ahead": 2}, model_id=dict(MODEL_ID),
    )
    values.update(overrides)
    return tiny_config(**values)


@dataclass(frozen=True)
class TinyTts:
    moshi_weights: Path
    config: Path
    mimi_weights: Path
    tokenizer: Path
    voice: Path

    def cli_args(self) -> list[str]:
        return ["--moshi-weights", str(self.moshi_weights), "--config", str(self.config),
                "--mimi-weights", str(self.mimi_weights), "--tokenizer", str(self.tokenizer),
                "--voice", str(self.voice)]


def write_voice(path: Path, dim: int = VOICE_DIM, length: int = 10, seed: int = 0,
                model_id: dict | None = None) -> Path:
    """A random voice file in Kyutai's format: `speaker_wavs` `[1, dim, length]` float32, the model's id as
    metadata."""
    model_id = MODEL_ID if model_id is None else model_id
    emb = mx.random.normal((1, dim, length), key=mx.random.key(seed))
    mx.save_safetensors(str(path), {"speaker_wavs": emb},
                        metadata={"sig": str(model_id["sig"]), "epoch": str(model_id["epoch"])})
    return path


def tiny_prefix_tts_config(n_q: int = 8) -> LmConfig:
    """The `tts-0.75b-en-public` structure with tiny dimensions: no speaker embeddings or cross-attention, a
    `control` condition only, a 5-wide text head; its voice is a recording fed before the text."""
    values = tiny_tts_config(n_q).to_dict() | dict(
        cross_attention=False, text_card_out=5, fuser={"sum": ["control"], "prepend": [], "cross": []},
        conditioners={"control": {"type": "lut", "lut": {"n_bins": 1, "dim": 32, "tokenizer": "noop",
                                                         "possible_values": ["ok"]}}},
    )
    return LmConfig.from_dict(values)


def write_recording(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    """A voice recording stand-in: a mono 24 kHz WAV of a wobbling tone in noise."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    pcm = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(str(path), pcm.astype(np.float32), 24000, subtype="PCM_16")
    return path


def write_tiny_tts(directory: str | Path, mimi_weights: str | Path | None = None, seed: int = 0,
                   prefix_voice: bool = False) -> TinyTts:
    """A tiny TTS model on disk; with `prefix_voice`, the `tts-0.75b-en-public` structure and a recording as
    its voice."""
    directory = Path(directory)
    config = tiny_prefix_tts_config() if prefix_voice else tiny_tts_config()
    weights, config = write_random_lm(directory, config, seed=seed, scale=3.0)
    if mimi_weights is None:
        mimi_weights = directory / "mimi.safetensors"
        if not mimi_weights.exists():
            write_random_mimi(mimi_weights, seed=seed)
    tokenizer = write_tiny_tokenizer(directory / "tokenizer.model")
    suffix = f".{MODEL_ID['sig']}@{MODEL_ID['epoch']}.safetensors"
    if prefix_voice:
        voice = write_recording(directory / f"{VOICE_NAME}.wav", seed=seed)
    else:
        voice = write_voice(directory / f"{VOICE_NAME}{suffix}", seed=seed)
    return TinyTts(weights, config, Path(mimi_weights), tokenizer, voice)
