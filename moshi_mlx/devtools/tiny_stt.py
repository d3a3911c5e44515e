"""A tiny speech-to-text model on disk: Kyutai's STT structure (dep_q 0, 32 Mimi codebooks in, voice-activity heads,
`stt_config`) with tiny random weights, a random full-size Mimi and a tokenizer of its text vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.config import LmConfig
from .random_lm import tiny_config, write_random_lm
from .random_mimi import write_random_mimi
from .tiny_model import TinyModel
from .tiny_tokenizer import write_tiny_tokenizer

# Kyutai's STT file path pads by these (stt-1b-en_fr: 0.5 s delay, no prefix); a prefix here exercises it.
TINY_STT_DELAY_S = 0.48
TINY_STT_PREFIX_S = 0.16


def tiny_stt_config(**overrides: Any) -> LmConfig:
    """STT's structure with tiny dimensions: 32 audio streams in, none generated, delays 0, 4 extra heads of 6."""
    values: dict[str, Any] = dict(
        n_q=32, dep_q=0, card=2048, text_card=64, delays=[0] * 33, context=40, extra_heads_num_heads=4,
        extra_heads_dim=6, model_type="stt",
        stt_config={"audio_delay_seconds": TINY_STT_DELAY_S, "audio_silence_prefix_seconds": TINY_STT_PREFIX_S},
    )
    values.update(overrides)
    return tiny_config(**values)


def write_tiny_stt(
    directory: str | Path,
    mimi_weights: str | Path | None = None,
    seed: int = 0,
    layout: str = "mlx",
    **overrides: Any,
) -> TinyModel:
    """Write a tiny STT model into `directory` (weights in `layout` "mlx" or "pytorch"); a random Mimi too unless
    `mimi_weights` names one (about 385 MB). `TinyModel.load_pipeline` loads it with `SttGen` and a 32-codebook
    Mimi; pass `temp_text=0` for Kyutai's greedy decoding."""
    directory = Path(directory)
    config = tiny_stt_config(**overrides)
    # A larger weight scale spreads the text logits, so that greedy choices are clear and the text varies.
    weights, config_path = write_random_lm(directory, config, seed=seed, layout=layout, scale=3.0)
    if mimi_weights is None:
        mimi_weights = directory / "mimi.safetensors"
        if not mimi_weights.exists():
            write_random_mimi(mimi_weights, seed=seed)
    tokenizer = write_tiny_tokenizer(directory / "tokenizer.model", vocab_size=config.text_card)
    return TinyModel(weights, config_path, Path(mimi_weights), tokenizer)
