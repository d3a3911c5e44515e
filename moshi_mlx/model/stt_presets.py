"""Kyutai's released speech-to-text configs in its JSON schema, as reconstructed in docs/stt.md (for `bench` and
the layout tests; a downloaded model uses its repo's own config.json).

Plain dicts, nothing imported from moshi_mlx at load time: Kyutai's PyTorch environment reads this file by path
(tests/fixtures/make_stt_fixtures.py).
"""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "card": 2048, "n_q": 32, "dep_q": 0, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "max_period": 100000, "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
    "existing_text_padding_id": 3, "delays": [0] * 33,
    # Present in Kyutai's STT configs (its MLX loader reads them), unused without a depth transformer.
    "depformer_dim": 1024, "depformer_dim_feedforward": 4224, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_causal": True, "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 8,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "model_type": "stt", "moshi_name": "model.safetensors", "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
}

STT_PRESETS: dict[str, dict[str, Any]] = {
    "stt-1b": {
        **_COMMON, "dim": 2048, "text_card": 8000, "num_heads": 16, "num_layers": 16, "context": 750,
        "extra_heads_num_heads": 4, "extra_heads_dim": 6,
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
        "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
    },
    "stt-2.6b": {
        **_COMMON, "dim": 2048, "text_card": 4000, "num_heads": 32, "num_layers": 48, "context": 375,
        "stt_config": {"audio_delay_seconds": 2.5},
        "tokenizer_name": "tokenizer_en_audio_4000.model",
    },
}


def stt_preset(name: str) -> Any:
    """The `LmConfig` of `stt-1b` or `stt-2.6b` (Kyutai's stt-1b-en_fr, stt-2.6b-en)."""
    from ..errors import MoshiError
    from .config import LmConfig

    if name not in STT_PRESETS:
        raise MoshiError(f"unknown speech-to-text model {name!r}: use {' or '.join(STT_PRESETS)}")
    return LmConfig.from_dict(STT_PRESETS[name])
