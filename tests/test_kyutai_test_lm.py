"""Kyutai's own LM test (moshi 0.2.13 `test_lm.test_forward`) on our `Lm.forward_codes`.

A tiny model unlike the 7B: LayerNorm with bias, a plain GELU MLP in the temporal transformer, sinusoidal
positions in both transformers, a depth-weight schedule [0, 1, 1], low-rank depth embeddings, context 4.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx import LmConfig, load_lm

ASSETS = Path(__file__).parent / "fixtures" / "kyutai_test_lm"

# The arguments of Kyutai's test model, and the LMModel / StreamingTransformer defaults it relies on.
CONFIG = {
    "delays": [0, 1, 2, 4], "n_q": 3, "dep_q": 3, "card": 32, "text_card": 48, "dim": 16, "num_layers": 2,
    "num_heads": 1, "hidden_scale": 1, "depformer_dim": 16, "depformer_multi_linear": True,
    "depformer_weights_per_step": True, "depformer_weights_per_step_schedule": [0, 1, 1],
    "depformer_low_rank_embeddings": 8, "depformer_num_heads": 1, "depformer_gating": "silu", "context": 4,
    # Defaults: layer norm with bias, no gating in the temporal transformer, sinusoidal positions everywhere.
    "norm": "layer_norm", "gating": "none", "positional_embedding": "sin", "depformer_pos_emb": "sin",
    "max_period": 10000, "layer_scale": None, "causal": True,
    # The depth transformer inherits the temporal transformer's depth.
    "depformer_num_layers": 2,
}


@pytest.fixture(scope="module")
def outputs():
    lm = load_lm(ASSETS / "test_lm_model.safetensors", LmConfig.from_dict(CONFIG), dtype=mx.float32)
    codes = np.array(mx.load(str(ASSETS / "test_lm_codes.safetensors"))["codes"])
    ref = {k: np.array(v) for k, v in mx.load(str(ASSETS / "test_lm_out.safetensors")).items()}
    text, audio = (np.array(x) for x in lm.forward_codes(mx.array(codes)))
    return codes, ref, text, audio


def cross_entropy(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-position CE `[B, K, T]`, zero where masked out (as Kyutai's `cross_entropy`)."""
    logits = np.where(mask[..., None], logits, 0.0).astype(np.float64)
    safe = np.where(mask, targets, 0)
    top = logits.max(axis=-1, keepdims=True)
    log_partition = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    ce = log_partition - np.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    return np.where(mask, ce, 0.0)


def relative_ce_delta(logits, ref_logits, targets, mask) -> float:
    """Kyutai's criterion: per-codebook mean CE (over batch and time) relative to the reference's."""
    ce = cross_entropy(logits, targets, mask).mean(axis=(0, 2))
    ce_ref = cross_entropy(ref_logits, targets, mask).mean(axis=(0, 2))
    return float((np.abs(ce - ce_ref) / ce_ref).max())


def test_shapes_and_masks(outputs):
    codes, ref, text, audio = outputs
    assert audio.shape == ref["logits"].shape == (3, 3, 7, 32)
    assert text.shape == ref["text_logits"].shape == (3, 1, 7, 48)
    # Our invalid positions are NaN; Kyutai's mask also leaves out zero tokens (-1) in the codes.
    np.testing.assert_array_equal(~np.isnan(audio).any(-1) & (codes[:, 1:] != -1), ref["mask"])
    np.testing.assert_array_equal(~np.isnan(text).any(-1) & (codes[:, :1] != -1), ref["text_mask"])


def test_cross_entropy_matches_kyutai(outputs):
    codes, ref, text, audio = outputs
    assert relative_ce_delta(audio, ref["logits"], codes[:, 1:], ref["mask"]) <= 1e-6
    assert relative_ce_delta(text, ref["text_logits"], codes[:, :1], ref["text_mask"]) <= 1e-6


def test_logits_match_kyutai(outputs):
    _, ref, text, audio = outputs
    for ours, theirs in ((audio, ref["logits"]), (text, ref["text_logits"])):
        valid = ~np.isnan(theirs)
        np.testing.assert_array_equal(np.isnan(ours), ~valid)
        np.testing.assert_allclose(ours[valid], theirs[valid], rtol=0, atol=1e-5)
