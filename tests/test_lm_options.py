"""Config options the 7B does not use, against Kyutai's PyTorch `LMModel.forward` (moshi 0.2.13).

Fixtures from tests/fixtures/make_lm_option_fixtures.py: `defaults` (keys left out take `LMModel`'s defaults),
`rms_scale_rope` (rms_norm, layer scale, sin_rope, RoPE in the depth transformer), `lnf32_schedule`
(layer_norm_f32, no positions, depth-weight schedule with one input projection, low-rank embeddings).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx import LmConfig, LmGen, load_lm

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = ["defaults", "rms_scale_rope", "lnf32_schedule"]
TOL = 1e-4


@functools.cache
def model(variant: str):
    config = LmConfig.from_dict(json.loads((FIXTURES / f"lm_opt_{variant}.json").read_text()))
    return load_lm(FIXTURES / f"lm_opt_{variant}.safetensors", config, dtype=mx.float32)


@functools.cache
def reference(variant: str) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(FIXTURES / f"lm_opt_{variant}_out.safetensors")).items()}


def test_defaults_variant_relies_on_lmmodel_defaults():
    cfg = model("defaults").config
    assert (cfg.norm, cfg.gating, cfg.positional_embedding, cfg.context) == ("layer_norm", "none", "sin", None)
    assert cfg.depformer_num_layers == cfg.num_layers == 2 and cfg.depth_transformer().gating == "none"
    assert cfg.depformer_schedule == [0, 0] and cfg.depformer_in_schedule == [0, 0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_codes_matches_pytorch(variant):
    ref = reference(variant)
    text, audio = (np.array(x) for x in model(variant).forward_codes(mx.array(ref["codes"])))
    for ours, theirs in ((text, ref["text_logits"]), (audio, ref["audio_logits"])):
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        valid = ~np.isnan(theirs)
        assert np.abs(theirs[valid]).std() > 0.5, "degenerate fixture"
        np.testing.assert_allclose(ours[valid], theirs[valid], rtol=0, atol=TOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_matches_pytorch_forward(variant):
    """`LmGen` teacher-forced on the fixture's conversation gives PyTorch's forward logits step by step.

    Forward feeds stream k at position t the code `codes[k, t-1-d_k]`; streaming feeds Moshi's tokens sampled at
    step t-1 and the user's frame t-d_k. So Moshi's stream k is forced to `codes[k, t-d_k]` at step t, and the
    user's frame f is `codes[user, f-1]`.
    """
    lm, ref = model(variant), reference(variant)
    cfg, codes = lm.config, ref["codes"][0]
    moshi, steps = cfg.dep_q + 1, codes.shape[1]
    gen = LmGen(lm, seed=0)
    for t in range(steps):
        user = codes[moshi:, t - 1] if t else np.zeros(cfg.n_q - cfg.dep_q, dtype=np.int64)
        forced = [codes[k, t - d] if t >= d else 0 for k, d in enumerate(cfg.delays[:moshi])]
        out = gen.step_forced(user, text=int(forced[0]), audio=forced[1:])
        np.testing.assert_allclose(out.text_logits, ref["text_logits"][0, 0, t], rtol=0, atol=TOL)
        for k, d in enumerate(cfg.delays[1:moshi]):
            if t >= d:
                np.testing.assert_allclose(out.audio_logits[k], ref["audio_logits"][0, k, t - d], rtol=0, atol=TOL,
                                           err_msg=f"codebook {k} at step {t}")
