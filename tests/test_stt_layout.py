"""Kyutai's STT checkpoints at their real shapes (stt-1b-en_fr, stt-2.6b-en): PyTorch and MLX names, bf16, q8, q4.

Nothing is evaluated: MLX arrays are lazy, so names, shapes and dtypes come without allocating the weights. Kyutai's
PyTorch names and shapes were recorded from its `LMModel` on the meta device (tests/fixtures/make_stt_fixtures.py).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from moshi_mlx import Lm, LmConfig, MoshiError, load_lm, save_lm
from moshi_mlx.devtools.random_lm import random_lm, write_random_lm
from moshi_mlx.devtools.tiny_stt import tiny_stt_config
from moshi_mlx.model.pytorch_names import sanitize, to_pytorch_names
from moshi_mlx.model.stt_presets import stt_preset
from moshi_mlx.model.weights import _check_dtypes, _check_names, _quantization_of, summarize_quantization

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["stt-1b", "stt-2.6b"]
KYUTAI_QUANT = {"q8": (8, 64), "q4": (4, 32)}  # Kyutai's MLX releases: nn.quantize(bits, group_size)
MOSHIKO_NAMES = set().union(*json.loads((FIXTURES / "moshiko_v0_1_mlx_layout.json").read_text()).values())


@functools.cache
def kyutai_layouts() -> dict[str, dict[str, list[int]]]:
    return json.loads((FIXTURES / "stt_layouts.json").read_text())


def config(name: str) -> LmConfig:
    return stt_preset(name)


def lazy(name: str, quant: str = "bf16") -> Lm:
    lm = Lm(config(name))
    lm.update(tree_map(lambda p: p.astype(mx.bfloat16), lm.parameters()))
    if quant in KYUTAI_QUANT:
        bits, group = KYUTAI_QUANT[quant]
        nn.quantize(lm, group_size=group, bits=bits)
    return lm


def shapes(weights: dict[str, mx.array]) -> dict[str, list[int]]:
    return {n: list(a.shape) for n, a in weights.items()}


@pytest.mark.parametrize("name", MODELS)
def test_real_configs_read_as_kyutai_publishes_them(name):
    cfg = config(name)
    assert (cfg.n_q, cfg.dep_q, cfg.card, cfg.model_type, cfg.delays) == (32, 0, 2048, "stt", [0] * 33)
    params = sum(int(np.prod(a.shape)) for _, a in tree_flatten(Lm(cfg).parameters()))
    assert 0.9e9 < params < 1.1e9 if name == "stt-1b" else 2.4e9 < params < 2.8e9
    assert cfg.extra_heads_num_heads == (4 if name == "stt-1b" else 0)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_pytorch_layout_is_kyutais_and_loads(name, fused):
    cfg = config(name)
    ours = dict(tree_flatten(lazy(name).parameters()))
    pytorch = to_pytorch_names(ours, cfg, fused=fused)
    expected = kyutai_layouts()[name]
    if fused:  # the released files: each layer's attention projections as one matrix
        expected = {re.sub(r"in_projs\.0\.weight$", "in_proj_weight", re.sub(r"out_projs\.0\.", "out_proj.", n)): s
                    for n, s in expected.items()}
    assert shapes(pytorch) == expected
    # Kyutai's LMModel keeps one `depformer_in` when multi_linear is false, unused without a depth transformer.
    extra = {"depformer_in.0.weight": mx.zeros((cfg.depformer_dim, cfg.dim), mx.bfloat16)}
    loaded = sanitize({**pytorch, **extra}, cfg)
    assert shapes(loaded) == shapes(ours)
    _check_names(lazy(name), loaded, Path("model.safetensors"))


@pytest.mark.parametrize("quant", ["bf16", "q8", "q4"])
@pytest.mark.parametrize("name", MODELS)
def test_mlx_layout_loads_quantized_as_kyutai_quantizes(name, quant):
    weights = dict(tree_flatten(lazy(name, quant).parameters()))
    # Kyutai's MLX names: the 7B's (from its published manifest) with 32 audio tables and the extra heads.
    for n in weights:
        base = re.sub(r"^audio_embs\.\d+\.", "audio_embs.0.", re.sub(r"^transformer\.layers\.\d+\.", "transformer."
                                                                      "layers.0.", n))
        assert base in MOSHIKO_NAMES or re.match(r"^extra_heads\.[0-3]\.(weight|scales|biases)$", n), n
    model = Lm(config(name))
    quantization = _quantization_of(model, weights)
    assert summarize_quantization(quantization) == quant
    if quantization:
        nn.quantize(model, class_predicate=lambda p, m: quantization.get(p, False))
    _check_names(model, weights, Path("model.safetensors"))
    _check_dtypes(weights, quantization, Path("model.safetensors"))


@pytest.mark.parametrize("layout", ["mlx", "pytorch", "pytorch-fused"])
def test_tiny_stt_round_trip(tmp_path, layout):
    cfg = tiny_stt_config()
    weights, config_path = write_random_lm(tmp_path, cfg, seed=2, layout=layout)
    loaded = load_lm(weights, config_path, dtype=mx.float32)
    assert loaded.config == cfg and len(loaded.extra_heads) == 4
    expected = dict(tree_flatten(random_lm(cfg, seed=2).parameters()))
    for name, value in tree_flatten(loaded.parameters()):
        np.testing.assert_array_equal(np.array(value), np.array(expected[name]), err_msg=name)


def test_tiny_stt_quantized_round_trip(tmp_path):
    lm = random_lm(tiny_stt_config(dim=128), seed=3)
    nn.quantize(lm, group_size=32, bits=4)
    save_lm(lm, tmp_path / "model.q4.safetensors")
    loaded = load_lm(tmp_path / "model.q4.safetensors", tiny_stt_config(dim=128))
    assert summarize_quantization(loaded.quantization) == "q4" and "extra_heads.0" in loaded.quantization


def test_moshi_weights_for_an_stt_config_are_one_line_errors(tmp_path):
    weights, _ = write_random_lm(tmp_path, None, seed=0)  # the 7B's structure, tiny
    with pytest.raises(MoshiError, match="does not fit the model config") as e:
        load_lm(weights, tiny_stt_config(dim=32))
    assert "\n" not in str(e.value)
