"""Kyutai's `tts-1.6b-en_fr` and `tts-0.75b-en-public` configs load, and their checkpoint layouts (PyTorch, fused
as released; MLX names as Kyutai's `moshi_mlx` names them) fit our model at the real shapes; bf16, q8 and q4.

Nothing is evaluated: MLX arrays are lazy. The config is the one Kyutai publishes (as mirrored publicly); the
released file holds 418 tensors, 8 of them (the conditioners') float32.
"""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from moshi_mlx.devtools.tiny_tts import TTS_0_75B, TTS_1_6B
from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.lm import Lm
from moshi_mlx.model.pytorch_names import is_pytorch_layout, sanitize, to_pytorch_names
from moshi_mlx.model.weights import _check_names, _quantization_of


def lazy(config: dict = TTS_1_6B) -> Lm:
    return Lm(LmConfig.from_dict(config))


def shapes(weights: dict) -> dict:
    return {n: tuple(v.shape) for n, v in weights.items()}


def test_config_reads_every_tts_key():
    cfg = LmConfig.from_dict(TTS_1_6B)
    assert cfg.tts_config == {"audio_delay": 1.28, "second_stream_ahead": 2}
    assert cfg.model_id["sig"] == "1e68beda" and cfg.text_out_card == 8000
    assert cfg.depformer_schedule[-1] == 10 and cfg.cross_attention and cfg.demux_second_stream
    assert LmConfig.from_dict(cfg.to_dict()) == cfg


def test_released_pytorch_layout_has_kyutais_418_tensors():
    ours = dict(tree_flatten(lazy().parameters()))
    released = to_pytorch_names(ours, lazy().config, fused=True)
    assert len(released) == 418
    assert sorted(n for n in released if n.startswith("condition_provider.")) == [
        "condition_provider.conditioners.cfg.embed.weight", "condition_provider.conditioners.cfg.learnt_padding",
        "condition_provider.conditioners.cfg.output_proj.weight",
        "condition_provider.conditioners.control.embed.weight",
        "condition_provider.conditioners.control.learnt_padding",
        "condition_provider.conditioners.control.output_proj.weight",
        "condition_provider.conditioners.speaker_wavs.learnt_padding",
        "condition_provider.conditioners.speaker_wavs.output_proj.weight",
    ]
    expected = {
        "text_emb.weight": (8001, 2048), "text_emb.out2.weight": (2048, 2048),
        "transformer.layers.0.cross_attention.in_proj_weight": (6144, 2048),
        "transformer.layers.15.norm_cross.bias": (2048,), "depformer_text_emb.low_rank.weight": (1024, 128),
        "depformer_text_emb.out1.weight": (1024, 128), "depformer_emb.30.low_rank.weight": (1024, 128),
        "depformer.layers.3.self_attn.in_proj_weight": (11 * 3072, 1024), "depformer_in.10.weight": (1024, 2048),
        "depformer.layers.0.gating.10.linear_in.weight": (4096, 1024), "linears.31.weight": (2048, 1024),
        "condition_provider.conditioners.control.embed.weight": (2, 2048),
        "condition_provider.conditioners.speaker_wavs.output_proj.weight": (2048, 512),
        "condition_provider.conditioners.cfg.learnt_padding": (1, 1, 2048),
    }
    assert {n: tuple(released[n].shape) for n in expected} == expected
    assert is_pytorch_layout(released)
    back = sanitize(released, lazy().config)
    assert shapes(back) == shapes(ours)


def test_0_75b_config_and_released_layout():
    """16 codebooks, a 5-wide text head, no cross-attention, a `control` condition only; about 0.78 B parameters
    (1.56 GB in bf16, which with Mimi makes the 2 GB download public mirrors list)."""
    cfg = LmConfig.from_dict(TTS_0_75B)
    assert (cfg.n_q, cfg.dep_q, cfg.text_out_card, cfg.cross_attention) == (16, 16, 5, False)
    assert LmConfig.from_dict(cfg.to_dict()) == cfg
    ours = dict(tree_flatten(lazy(TTS_0_75B).parameters()))
    released = to_pytorch_names(ours, cfg, fused=True)
    expected = {
        "text_linear.weight": (5, 1024), "text_emb.weight": (8001, 1024), "emb.15.weight": (2049, 1024),
        "transformer.layers.23.self_attn.in_proj_weight": (3072, 1024),
        "depformer.layers.3.self_attn.in_proj_weight": (9 * 3072, 1024), "linears.15.weight": (2048, 1024),
        "condition_provider.conditioners.control.embed.weight": (2, 1024),
    }
    assert {n: tuple(released[n].shape) for n in expected} == expected
    assert not any("cross_attention" in n or "speaker_wavs" in n for n in released)
    assert 0.75e9 < sum(v.size for v in released.values()) < 0.8e9
    assert shapes(sanitize(released, cfg)) == shapes(ours)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("config", [TTS_1_6B, TTS_0_75B], ids=["1.6b", "0.75b"])
def test_pytorch_names_map_back(fused, config):
    model = lazy(config)
    ours = dict(tree_flatten(model.parameters()))
    _check_names(model, sanitize(to_pytorch_names(ours, model.config, fused=fused), model.config), _Path())


def test_kyutai_mlx_names():
    """The names Kyutai's moshi_mlx gives a TTS model are ours."""
    names = set(dict(tree_flatten(lazy().parameters())))
    for name in ("text_emb.out1.weight", "depformer.slices.0.emb.low_rank.weight", "depformer.slices.0.emb.out2.weight",
                 "depformer.slices.5.emb.low_rank.weight", "transformer.layers.3.cross_attention.in_proj.weight",
                 "transformer.layers.3.cross_attention.out_proj.weight", "transformer.layers.3.norm_cross.weight",
                 "condition_provider.conditioners.cfg.embed.weight", "out_norm.weight", "audio_embs.31.weight"):
        assert name in names, name
    assert not is_pytorch_layout(names)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("config", [TTS_1_6B, TTS_0_75B], ids=["1.6b", "0.75b"])
def test_quantized_as_kyutai_loads(bits, whole, config):
    """Quantized as Kyutai's run_tts does (depth transformer, the temporal layers' attention and MLP), or whole."""
    model = lazy(config)
    model.update(_bf16(model.parameters()))
    if whole:  # every table and projection whose width the group size divides
        nn.quantize(model, bits=bits, class_predicate=lambda p, m: hasattr(m, "to_quantized")
                    and m.weight.shape[-1] % 64 == 0)
    else:
        nn.quantize(model.depformer, bits=bits)
        for layer in model.transformer.layers:
            nn.quantize(layer.self_attn, bits=bits)
            nn.quantize(layer.gating, bits=bits)
    weights = dict(tree_flatten(model.parameters()))
    fresh = lazy(config)
    found = _quantization_of(fresh, weights)
    assert {q["bits"] for q in found.values()} == {bits}
    nn.quantize(fresh, class_predicate=lambda p, m: found.get(p, False))
    _check_names(fresh, weights, _Path())


def _bf16(params):
    from mlx.utils import tree_map

    return tree_map(lambda p: p.astype(mx.bfloat16), params)


class _Path:
    name = "model.safetensors"
