import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from moshi_mlx import LmGen, MoshiError, load_lm, save_lm
from moshi_mlx.devtools.random_lm import random_lm, tiny_config, write_random_lm
from moshi_mlx.model.weights import save_lm_pytorch, summarize_quantization

CODES = np.random.default_rng(0).integers(0, 64, size=(1, 17, 12)).astype(np.int32)

CONFIGS = {
    "7b-structure": tiny_config(),
    "schedule+low-rank": tiny_config(
        depformer_weights_per_step_schedule=[0, 1, 1, 2, 2, 2, 3, 3], depformer_low_rank_embeddings=8
    ),
    "layer-norm+gelu+sin": tiny_config(
        norm="layer_norm", gating="none", positional_embedding="sin", depformer_pos_emb="sin",
        depformer_gating="silu", layer_scale=0.5,
    ),
}

# Every matrix width a multiple of 64, as in the 7B, so Kyutai's group sizes apply.
QUANT_CONFIG = tiny_config(dim=64, hidden_scale=3, depformer_dim=64, depformer_dim_feedforward=192)


def logits(lm):
    text, audio = lm.forward_codes(mx.array(CODES))
    return np.array(text), np.array(audio)


def assert_same(a, b, atol=0.0):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("layout", ["mlx", "pytorch", "pytorch-fused"])
def test_round_trip_identical(tmp_path, name, layout):
    cfg = CONFIGS[name]
    reference = random_lm(cfg, seed=1)
    weights, config = write_random_lm(tmp_path, cfg, seed=1, layout=layout)
    loaded = load_lm(weights, config, dtype=mx.float32)
    assert_same(logits(reference), logits(loaded))


@pytest.mark.parametrize("bits, group_size", [(8, 64), (4, 32)])
def test_quantized_round_trip(tmp_path, bits, group_size):
    cfg = QUANT_CONFIG
    lm = random_lm(cfg, seed=2)
    full = logits(lm)
    nn.quantize(lm, group_size=group_size, bits=bits)
    path = tmp_path / f"model.q{bits}.safetensors"
    save_lm(lm, path)
    loaded = load_lm(path, cfg, dtype=mx.float32)
    assert summarize_quantization(loaded.quantization) == f"q{bits}"
    assert_same(logits(lm), logits(loaded))  # strict load: bit-identical to the quantized model
    for quantized, reference in zip(logits(loaded), full, strict=True):
        valid = ~np.isnan(reference)
        relative = np.linalg.norm(quantized[valid] - reference[valid]) / np.linalg.norm(reference[valid])
        assert relative < (0.05 if bits == 8 else 0.5)


def test_mixed_precision_detected_per_module(tmp_path):
    cfg = QUANT_CONFIG
    lm = random_lm(cfg, seed=3)
    def under(prefix):
        return lambda path, module: path.startswith(prefix) and hasattr(module, "to_quantized")

    nn.quantize(lm, 64, 8, class_predicate=under("depformer"))
    nn.quantize(lm, 32, 4, class_predicate=under("transformer"))
    path = tmp_path / "mixed.safetensors"
    save_lm(lm, path)
    loaded = load_lm(path, cfg, dtype=mx.float32)
    assert summarize_quantization(loaded.quantization) == "mixed"
    assert loaded.quantization["transformer.layers.0.self_attn.in_proj"] == {"group_size": 32, "bits": 4}
    assert loaded.quantization["depformer.slices.3.linear_out"] == {"group_size": 64, "bits": 8}
    assert "text_emb" not in loaded.quantization
    assert_same(logits(lm), logits(loaded))


def test_bf16_default_dtype(tmp_path):
    weights, config = write_random_lm(tmp_path, tiny_config())
    lm = load_lm(weights, config)
    assert {a.dtype for _, a in tree_flatten(lm.parameters())} == {mx.bfloat16}
    out = LmGen(lm, seed=0).step(np.zeros(8, dtype=np.int64))
    assert 0 <= out.text_token < 64


def _resave(path, out, edit):
    weights = mx.load(str(path))
    edit(weights)
    mx.save_safetensors(str(out), weights)
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("out_norm.weight"), "missing tensor 'out_norm.weight'"),
    (lambda w: w.update(extra=mx.zeros(3)), "unexpected tensor 'extra'"),
    (lambda w: w.update({"text_linear.weight": mx.zeros((3, 32))}), "tensor 'text_linear.weight' has shape"),
])
def test_strict_loading_names_the_first_bad_tensor(tmp_path, edit, message):
    weights, config = write_random_lm(tmp_path, tiny_config())
    bad = _resave(weights, tmp_path / "bad.safetensors", edit)
    with pytest.raises(MoshiError) as e:
        load_lm(bad, config)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_wrong_config_for_checkpoint(tmp_path):
    weights, _ = write_random_lm(tmp_path, tiny_config())
    with pytest.raises(MoshiError, match="does not fit the model config"):
        load_lm(weights, tiny_config(dim=48))


def test_pytorch_names_with_wrong_config(tmp_path):
    lm = random_lm(tiny_config(), seed=0)
    save_lm_pytorch(lm, tmp_path / "pt.safetensors")
    with pytest.raises(MoshiError, match="does not fit"):
        load_lm(tmp_path / "pt.safetensors", tiny_config(num_layers=3))


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MoshiError, match="weights file not found"):
        load_lm(tmp_path / "nope.safetensors", tiny_config())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MoshiError, match="cannot read weights"):
        load_lm(junk, tiny_config())
