"""PersonaPlex's layout: NVIDIA's 7B names and shapes (lazily, nothing allocated), its config (also from a
checkpoint's tensors alone), NVIDIA's expansion of 8 depth steps to 16, prompts refused in one line, and our
q8 / q4 / mixed of it (the 7B's from shapes; a tiny one end to end, quality report included)."""

import json
import re
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from moshi_mlx.quantize.quantizer import InputTensor, expected_layout, plan_layout, quantize_checkpoint
from moshi_mlx.quantize.recipes import make_plan
from moshi_mlx.quantize.report import quality_reports, random_codes

from moshi_mlx import Lm, LmConfig, LmGen, MoshiError, load_lm
from moshi_mlx.devtools.random_lm import random_lm, tiny_config, tiny_persona_config, write_random_lm
from moshi_mlx.model.persona_gen import PersonaGen
from moshi_mlx.model.persona_layout import config_from_checkpoint
from moshi_mlx.model.pytorch_names import sanitize, to_pytorch_names
from moshi_mlx.model.stt import make_generator
from moshi_mlx.model.weights import _check_names, _quantization_of, save_lm_pytorch
from moshi_mlx.persona.prompt import SINE_CODES, PersonaPrompt, prefill

LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "personaplex_7b_layout.json").read_text())


def test_7b_config_is_nvidias_fixed_one():
    cfg = LmConfig.personaplex_7b()
    assert cfg.takes_persona and (cfg.n_q, cfg.dep_q, cfg.depformer_dim_feedforward) == (16, 16, 4224)
    assert LmConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["model_type"] == "personaplex"
    assert not LmConfig.moshi_7b().takes_persona and "model_type" not in LmConfig.moshi_7b().to_dict()
    with pytest.raises(MoshiError, match="personaplex needs n_q 16 and dep_q 16"):
        LmConfig(model_type="personaplex")


def test_7b_pytorch_names_and_shapes_are_nvidias():
    cfg = LmConfig.personaplex_7b()
    ours = to_pytorch_names(dict(tree_flatten(Lm(cfg).parameters())), cfg, fused=True)
    assert {n: list(v.shape) for n, v in ours.items()} == LAYOUT


def test_nvidias_7b_tensors_fill_our_model_exactly():
    cfg = LmConfig.personaplex_7b()
    lm = Lm(cfg)
    renamed = sanitize({n: mx.zeros(shape, mx.bfloat16) for n, shape in LAYOUT.items()}, cfg)
    _check_names(lm, renamed, Path("model.safetensors"))
    assert len(renamed) == len(tree_flatten(lm.parameters()))


@pytest.mark.parametrize("quant", ["q4", "q8", "mixed"])
def test_our_quantized_7b_loads(quant):
    """The quantizer's output layout for NVIDIA's checkpoint is what `load_lm` builds and accepts."""
    cfg = LmConfig.personaplex_7b()
    plan = make_plan(cfg, recipe="mixed") if quant == "mixed" else make_plan(cfg, int(quant[1]))
    inputs = {n: InputTensor(tuple(shape), "BF16") for n, shape in LAYOUT.items()}
    specs = plan_layout(inputs, cfg, plan).tensor_specs()
    assert specs == expected_layout(cfg, plan)
    dtypes = {"BF16": mx.bfloat16, "U32": mx.uint32}
    weights = {n: mx.zeros(s.shape, dtypes[s.dtype]) for n, s in specs.items()}
    lm = Lm(cfg)
    quantization = _quantization_of(lm, weights)
    nn.quantize(lm, class_predicate=lambda p, m: quantization.get(p, False))
    _check_names(lm, weights, Path(f"model.{quant}.safetensors"))
    assert {q["bits"] for q in quantization.values()} == ({4, 8} if quant == "mixed" else {int(quant[1])})


def header_only(path: Path, shapes: dict) -> Path:
    """A safetensors header naming tensors (no data): all that `config_from_checkpoint` reads."""
    header = json.dumps({n: {"dtype": "BF16", "shape": list(s), "data_offsets": [0, 0]} for n, s in shapes.items()})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return path


def eight_steps(shapes: dict) -> dict:
    """NVIDIA's names with 8 depth steps: what its loader expands (depformer_emb 0..7 kept)."""
    out = {}
    for name, shape in shapes.items():
        m = re.search(r"\b(?:gating|linears|depformer_in|depformer_emb)\.(\d+)\.", name)
        if m and int(m.group(1)) >= 8:
            continue
        if name.startswith("depformer.layers.") and ".self_attn." in name:
            shape = [shape[0] // 2, *shape[1:]]
        out[name] = shape
    return out


def test_config_from_a_checkpoints_tensors(tmp_path):
    assert config_from_checkpoint(header_only(tmp_path / "a.safetensors", LAYOUT)) == LmConfig.personaplex_7b()
    assert config_from_checkpoint(header_only(tmp_path / "b.safetensors", eight_steps(LAYOUT))).dep_q == 16
    with pytest.raises(MoshiError, match="tensor 'text_emb.weight' has shape"):
        config_from_checkpoint(header_only(tmp_path / "c.safetensors", {**LAYOUT, "text_emb.weight": [32001, 2048]}))
    twelve = {n: s for n, s in LAYOUT.items() if not n.startswith(("linears.12", "linears.13", "linears.14",
                                                                   "linears.15"))}
    with pytest.raises(MoshiError, match="12 depth steps"):
        config_from_checkpoint(header_only(tmp_path / "d.safetensors", twelve))


def test_eight_depth_steps_expand_as_nvidias_loader(tmp_path):
    cfg = tiny_persona_config()
    names = to_pytorch_names(dict(tree_flatten(random_lm(cfg, seed=3).parameters())), cfg, fused=True)
    kept = eight_steps({n: v.shape for n, v in names.items()})
    weights = {n: names[n][: kept[n][0]] if list(names[n].shape) != list(kept[n]) else names[n] for n in kept}
    mx.save_safetensors(str(tmp_path / "eight.safetensors"), weights)
    lm = load_lm(tmp_path / "eight.safetensors", cfg, dtype=mx.float32)
    params = dict(tree_flatten(lm.parameters()))
    for k in range(8):
        for name, value in params.items():
            if name.startswith(f"depformer.slices.{k}.") and not (k == 0 and ".emb." in name):
                twin = name.replace(f"slices.{k}.", f"slices.{k + 8}.", 1)
                assert mx.array_equal(params[twin], value), twin
    del weights["depformer_emb.7.weight"]
    mx.save_safetensors(str(tmp_path / "seven.safetensors"), weights)
    with pytest.raises(MoshiError, match="lacks 'depformer_emb.7.weight'"):
        load_lm(tmp_path / "seven.safetensors", cfg)


def test_the_config_chooses_the_generator():
    assert type(make_generator(random_lm(tiny_persona_config()))) is PersonaGen
    assert type(make_generator(random_lm(tiny_config()))) is LmGen


def test_bad_prompts_get_one_line(tmp_path):
    cfg = tiny_persona_config(context=30)
    gen = PersonaGen(random_lm(cfg), temp=0, temp_text=0)
    codes = np.zeros((8, 4), dtype=np.int64)
    cases = {
        "not both": PersonaPrompt(voice_codes=codes, voice_embeddings=np.zeros((3, cfg.dim))),
        r"shape \(4, 8\), expected \[8, frames\]": PersonaPrompt(voice_codes=codes.T),
        r"must lie in \[0, 2048\)": PersonaPrompt(voice_codes=codes + 2048),
        "made for other weights": PersonaPrompt(voice_embeddings=np.zeros((3, 1, 1, 8)), voice_cache=None),
        "token cache has shape": PersonaPrompt(voice_embeddings=np.zeros((3, 1, 1, cfg.dim)),
                                               voice_cache=np.zeros((1, 17, 3), np.int64)),
        "more than the model's context of 30": PersonaPrompt(text_tokens=[5] * 20),
        "role's text tokens must lie": PersonaPrompt(text_tokens=[cfg.text_card]),
    }
    for message, prompt in cases.items():
        with pytest.raises(MoshiError, match=message):
            prefill(gen, prompt)
    with pytest.raises(MoshiError, match="takes no persona"):
        prefill(LmGen(random_lm(tiny_config())), PersonaPrompt(text_tokens=[5]))
    gen.step(SINE_CODES)
    with pytest.raises(RuntimeError, match="fresh"):
        prefill(gen, PersonaPrompt(text_tokens=[5]))


def test_quantized_persona_runs_and_reports(tmp_path):
    cfg = tiny_persona_config(dim=64, hidden_scale=3, depformer_dim=64, depformer_dim_feedforward=192)
    bf16, _ = write_random_lm(tmp_path / "in", cfg, seed=2, layout="pytorch-fused", dtype=mx.bfloat16)
    outputs = {}
    for name, plan in (("q4", make_plan(cfg, 4)), ("q8", make_plan(cfg, 8)), ("mixed", make_plan(cfg, recipe="mixed"))):
        result = quantize_checkpoint(bf16, tmp_path / name, cfg, plan)
        lm = load_lm(result.weights, result.config)
        assert lm.config.takes_persona and lm.quantization
        gen = make_generator(lm, seed=0)
        prefill(gen, PersonaPrompt(text_tokens=[5, 6, 7], voice_codes=np.arange(24).reshape(8, 3)))
        assert all(gen.step(SINE_CODES).audio_codes.shape == (8,) for _ in range(3))
        outputs[name] = result.weights
    reports = {r.name: r for r in quality_reports(bf16, outputs, cfg, random_codes(cfg, steps=12, batch=2))}
    assert reports["q8"].audio.kl < reports["q4"].audio.kl


def test_pytorch_names_round_trip(tmp_path):
    cfg = tiny_persona_config()
    lm = random_lm(cfg, seed=4)
    save_lm_pytorch(lm, tmp_path / "pt.safetensors", fused=True)
    again = load_lm(tmp_path / "pt.safetensors", cfg, dtype=mx.float32)
    for (n, a), (_, b) in zip(tree_flatten(lm.parameters()), tree_flatten(again.parameters()), strict=True):
        assert mx.array_equal(a, b), n


def test_quantize_takes_nvidias_checkpoint_without_a_model_config(tmp_path):
    """NVIDIA's repo has a config.json that is not a model config: the quantizer knows PersonaPlex by its tensors."""
    from moshi_mlx.app.quantize import resolve_input

    header_only(tmp_path / "model.safetensors", LAYOUT)
    (tmp_path / "config.json").write_text(json.dumps({"note": "not a model config"}))
    weights, config, config_path = resolve_input(str(tmp_path), None)
    assert config == LmConfig.personaplex_7b() and config_path is None
