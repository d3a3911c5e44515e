"""The quantizer: strict loading of every output, equality with MLX's in-memory quantization, Kyutai's 7B layouts
(from shapes only), the quality ordering q8 < mixed < q4, and the command line."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from moshi_mlx.app.quantize import main as quantize_main
from moshi_mlx.quantize.quantizer import InputTensor, expected_layout, plan_layout, quantize_checkpoint
from moshi_mlx.quantize.recipes import (
    MIXED,
    Q4,
    Q8,
    make_plan,
    module_group,
    quantizable_modules,
    quantization_block,
    quantize_model,
)
from moshi_mlx.quantize.report import quality_reports, random_codes
from moshi_mlx.quantize.safetensors_stream import SafetensorsReader

from moshi_mlx import Lm, LmConfig, MoshiError, load_lm
from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm
from moshi_mlx.model.weights import to_pytorch_names

MANIFEST = json.loads((Path(__file__).parent / "fixtures" / "moshiko_v0_1_mlx_layout.json").read_text())
DTYPES = {"bfloat16": "BF16", "uint32": "U32", "float32": "F32"}


def quantizable_config(**overrides) -> LmConfig:
    """The 7B's structure with every row a multiple of 64, so q4 (groups of 32) and q8 (64) apply everywhere."""
    values = dict(dim=64, hidden_scale=3, depformer_dim=64, depformer_dim_feedforward=192)
    return tiny_config(**{**values, **overrides})


CONFIG = quantizable_config()
PLANS = {"q4": make_plan(CONFIG, 4), "q8": make_plan(CONFIG, 8), "mixed": make_plan(CONFIG, recipe="mixed")}


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """A random checkpoint as Kyutai releases its bf16 weights: PyTorch names, fused attention."""
    weights, _ = write_random_lm(tmp_path_factory.mktemp("bf16"), CONFIG, seed=1, layout="pytorch-fused")
    return weights


@pytest.fixture(scope="module")
def outputs(bf16, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    return {name: quantize_checkpoint(bf16, out / name, CONFIG, plan) for name, plan in PLANS.items()}


@pytest.mark.parametrize("name", list(PLANS))
def test_output_loads_strictly_with_its_config_alone(outputs, name):
    result = outputs[name]
    assert result.weights.name == f"model.{name}.safetensors"
    saved = json.loads(result.config.read_text())
    assert LmConfig.from_dict(saved) == CONFIG
    assert saved["quantization"] == quantization_block(PLANS[name])
    assert saved["moshi_name"] == result.weights.name
    lm = load_lm(result.weights, result.config)
    expected = {path: spec.to_dict() for path, spec in PLANS[name].items()}
    assert dict(lm.quantization) == expected


def test_mixed_config_gives_every_module_its_precision(outputs):
    """mlx-lm's convention: a global precision, then per-module exceptions keyed by module path."""
    block = json.loads(outputs["mixed"].config.read_text())["quantization"]
    default = {"group_size": block["group_size"], "bits": block["bits"]}
    effective = {path: block.get(path, default) for path in PLANS["mixed"]}
    assert effective == {path: spec.to_dict() for path, spec in PLANS["mixed"].items()}
    assert set(block) - {"bits", "group_size"} <= set(PLANS["mixed"])
    eight_bit = {module_group(p) for p, spec in PLANS["mixed"].items() if spec == Q8}
    assert eight_bit == {g for g, spec in MIXED.items() if spec == Q8}


@pytest.mark.parametrize("name", list(PLANS))
def test_same_tensors_as_quantizing_the_loaded_bf16_model(bf16, outputs, name):
    reference = load_lm(bf16, CONFIG)
    quantize_model(reference, PLANS[name])
    expected = dict(tree_flatten(reference.parameters()))
    ours = mx.load(str(outputs[name].weights))
    assert ours.keys() == expected.keys()
    different = [n for n in expected if ours[n].dtype != expected[n].dtype or not mx.array_equal(ours[n], expected[n])]
    assert different == []


def test_pytorch_split_and_mlx_inputs_give_the_same_file(bf16, outputs, tmp_path):
    for layout in ("mlx", "pytorch"):
        weights, _ = write_random_lm(tmp_path / layout, CONFIG, seed=1, layout=layout)
        result = quantize_checkpoint(weights, tmp_path / f"{layout}-q4", CONFIG, PLANS["q4"])
        ours, reference = mx.load(str(result.weights)), mx.load(str(outputs["q4"].weights))
        assert ours.keys() == reference.keys()
        assert all(mx.array_equal(ours[n], reference[n]) for n in ours)


def test_sizes_and_bits_per_weight(outputs):
    sizes = {name: r.output_bytes for name, r in outputs.items()}
    assert sizes["q4"] < sizes["mixed"] < sizes["q8"] < outputs["q4"].input_bytes
    assert outputs["q4"].bits_per_weight < outputs["mixed"].bits_per_weight < outputs["q8"].bits_per_weight
    for result in outputs.values():
        with SafetensorsReader(result.weights) as reader:
            assert reader.metadata == {"format": "mlx"}
            assert result.output_bytes == result.weights.stat().st_size
            assert reader.total_bytes() <= result.output_bytes


def test_quality_report_orders_q8_mixed_q4(bf16, outputs):
    codes = random_codes(CONFIG, steps=48, batch=4, seed=0)
    reports = {r.name: r for r in quality_reports(bf16, {n: r.weights for n, r in outputs.items()}, CONFIG, codes)}
    q4, q8, mixed = reports["q4"], reports["q8"], reports["mixed"]
    for stream in ("text", "audio"):
        kl = [getattr(r, stream).kl for r in (q8, mixed, q4)]
        top1 = [getattr(r, stream).top1 for r in (q8, mixed, q4)]
        assert 0 < kl[0] < kl[1] < kl[2], (stream, kl)
        assert 1 >= top1[0] > top1[1] > top1[2], (stream, top1)
    assert q8.bits_per_weight < 9 and q4.bits_per_weight < q8.bits_per_weight


def test_report_against_itself_is_exact(bf16):
    codes = random_codes(CONFIG, steps=16, batch=2, seed=3)
    (report,) = quality_reports(bf16, {"bf16": bf16}, CONFIG, codes)
    for m in (report.text, report.audio):
        assert abs(m.kl) < 1e-9 and m.top1 == 1.0 and m.ce == m.ce_reference
        assert 0 < m.ce < 20


def _seven_b_inputs(layout: str) -> dict[str, InputTensor]:
    """Kyutai's 7B bf16 checkpoint, names and shapes only: its MLX manifest or its released PyTorch names."""
    if layout == "mlx":
        return {n: InputTensor(tuple(shape), DTYPES[dtype]) for n, (shape, dtype) in MANIFEST["bf16"].items()}
    config = LmConfig.moshi_7b()
    lazy = dict(tree_flatten(Lm(config).parameters()))  # never evaluated
    return {n: InputTensor(tuple(a.shape), "BF16") for n, a in to_pytorch_names(lazy, config, fused=True).items()}


@pytest.mark.parametrize("layout", ["mlx", "pytorch-fused"])
@pytest.mark.parametrize("quant", ["q4", "q8"])
def test_7b_default_layout_is_kyutais(layout, quant):
    config = LmConfig.moshi_7b()
    plan = make_plan(config, int(quant[1]))
    assert set(plan.values()) == {Q4 if quant == "q4" else Q8}
    layout_out = plan_layout(_seven_b_inputs(layout), config, plan)
    ours = {s.name: [list(s.shape), s.dtype] for s in layout_out.specs}
    kyutai = {n: [shape, DTYPES[dtype]] for n, (shape, dtype) in MANIFEST[quant].items()}
    assert sorted(set(ours) ^ set(kyutai)) == []
    assert {n: (ours[n], kyutai[n]) for n in kyutai if ours[n] != kyutai[n]} == {}


def test_7b_mixed_layout_is_what_load_lm_builds():
    config = LmConfig.moshi_7b()
    plan = make_plan(config, recipe="mixed")
    specs = plan_layout(_seven_b_inputs("pytorch-fused"), config, plan).tensor_specs()
    assert specs == expected_layout(config, plan)
    bits = {module_group(p): s.bits for p, s in plan.items()}
    assert bits == {"embeddings": 8, "text_linear": 8, "temporal.attention": 8, "temporal.mlp": 4, "depformer": 8}


def test_rows_that_do_not_split_into_groups_stay_bf16(tmp_path):
    config = tiny_config()  # depth transformer width 16, MLP width 88: no group of 32 fits
    plan = make_plan(config, 4)
    kept = {p for p, s in plan.items() if s is None}
    assert kept == {p for p, shape in quantizable_modules(config).items() if shape[-1] % 32}
    assert any(p.startswith("depformer.") for p in kept) and "text_linear" not in kept
    weights, _ = write_random_lm(tmp_path / "in", config)
    result = quantize_checkpoint(weights, tmp_path / "out", config, plan)
    block = json.loads(result.config.read_text())["quantization"]
    assert all(block[p] is False for p in kept)
    assert {p for p in load_lm(result.weights, result.config).quantization} == set(plan) - kept


def test_refuses_quantized_input_and_wrong_config(outputs, bf16, tmp_path):
    with pytest.raises(MoshiError, match="already quantized"):
        quantize_checkpoint(outputs["q4"].weights, tmp_path / "again", CONFIG, PLANS["q8"])
    other = quantizable_config(num_layers=3)
    with pytest.raises(MoshiError, match="lacks tensor 'transformer.layers.2"):
        quantize_checkpoint(bf16, tmp_path / "wrong", other, make_plan(other, 4))
    wider = quantizable_config(dim=128)
    with pytest.raises(MoshiError, match="wrong --config"):
        quantize_checkpoint(bf16, tmp_path / "wrong", wider, make_plan(wider, 4))
    with pytest.raises(MoshiError, match="holds the input"):
        quantize_checkpoint(bf16, bf16.parent, CONFIG, PLANS["q4"])
    assert not (tmp_path / "wrong").exists()


def test_cli_quantizes_and_reports(bf16, tmp_path, capsys):
    out = tmp_path / "out"
    quantize_main([str(bf16), "-o", str(out), "--bits", "8", "--steps", "8"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.q8.safetensors", "quality_report.json"]
    report = json.loads((out / "quality_report.json").read_text())
    assert [r["name"] for r in report["reports"]] == ["q8"]
    assert 0 < report["reports"][0]["audio"]["kl"] and report["codes"].startswith("random codes, 4 x 8")
    quantize_main([str(bf16), "-o", str(out), "--recipe", "mixed", "--no-report"])
    quantize_main([str(bf16), "-o", str(out), "--report", "--steps", "8", "--report-json", str(tmp_path / "r.json")])
    names = [r["name"] for r in json.loads((tmp_path / "r.json").read_text())["reports"]]
    assert sorted(names) == ["mixed", "q8"]
    assert "peak memory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "mixed", "--bits", "8"], "drop --bits"),
        (["--report", "--no-report"], "exclude each other"),
        (["--steps", "1"], "at least 2"),
    ],
)
def test_cli_option_errors(bf16, tmp_path, argv, message):
    with pytest.raises(MoshiError, match=message):
        quantize_main([str(bf16), "-o", str(tmp_path / "o"), *argv])


def test_cli_input_errors(tmp_path):
    with pytest.raises(MoshiError, match="input not found"):
        quantize_main([str(tmp_path / "nothing.safetensors"), "-o", str(tmp_path / "o")])
    with pytest.raises(MoshiError, match="has no model.safetensors"):
        quantize_main([str(tmp_path), "-o", str(tmp_path / "o")])
    with pytest.raises(MoshiError, match="nothing to report|quantize first"):
        quantize_main([str(write_random_lm(tmp_path / "in", CONFIG)[0]), "-o", str(tmp_path / "o"), "--report"])


def test_wav_codes_report(mimi_weights, tmp_path):
    import soundfile
    from moshi_mlx.quantize.report import wav_codes

    config = quantizable_config(card=2048)
    weights, _ = write_random_lm(tmp_path / "in", config, seed=2)
    wav = tmp_path / "speech.wav"
    t = np.arange(24000 * 6 // 10) / 24000
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32), 24000)
    codes = wav_codes(wav, mimi_weights, config, max_steps=6)
    assert codes.shape == (1, 17, 6)
    assert (codes[0, 0] == config.existing_text_padding_id).all()
    assert (codes[0, 1:9] == codes[0, 9:17]).all() and codes.max() < 2048 and codes[0, 1:].std() > 0
    quantize_main([str(weights), "-o", str(tmp_path / "out"), "--wav", str(wav), "--mimi-weights", str(mimi_weights)])
    report = json.loads((tmp_path / "out" / "quality_report.json").read_text())
    assert report["codes"] == "Mimi codes of speech.wav, 7 frames"
    with pytest.raises(MoshiError, match="drop --wav"):
        wav_codes(wav, mimi_weights, CONFIG)


def test_streaming_keeps_memory_near_one_tensor(tmp_path):
    """Quantizing in a fresh process: its peak memory grows by a small part of the input, not the input."""
    import importlib.util
    import subprocess
    import sys

    path = Path(__file__).parent.parent / "benchmarks" / "quantize_memory.py"
    spec = importlib.util.spec_from_file_location("quantize_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = quantizable_config(dim=512, num_heads=4, num_layers=20, text_card=2000, card=1024, depformer_dim=256,
                                depformer_dim_feedforward=768)
    weights, config_path = bench.write_random_checkpoint(tmp_path / "bf16", config)
    child = subprocess.run([sys.executable, "-c", bench.CHILD, str(weights), str(tmp_path / "out"), str(config_path),
                            "8", "uniform"], capture_output=True, text=True, check=True)
    r = json.loads(child.stdout.strip().splitlines()[-1])
    assert r["input_bytes"] > 120 * 1024**2, r
    grown = r["peak_rss"] - r["baseline_rss"]
    assert grown < 0.25 * r["input_bytes"], r


def test_hugging_face_repo_input_offline(bf16, tmp_path):
    """A repo in the Hugging Face cache (offline): its config.json names the weights and gives the model."""
    import os
    import subprocess
    import sys

    from test_hub import cache_repo

    config = {**CONFIG.to_dict(), "moshi_name": "lm.safetensors"}
    cache_repo(tmp_path / "hf", "someone/tiny-moshi-bf16",
               {"config.json": json.dumps(config).encode(), "lm.safetensors": bf16.read_bytes()})
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "moshi_mlx.app.cli", "quantize", *argv], env=env,
                              capture_output=True, text=True, timeout=300)

    done = cli("someone/tiny-moshi-bf16", "-o", str(tmp_path / "out"), "--no-report")
    assert done.returncode == 0, done.stderr
    assert load_lm(tmp_path / "out" / "model.q4.safetensors", tmp_path / "out" / "config.json").quantization
    missing = cli("someone/not-cached", "-o", str(tmp_path / "none"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("error: ")


def test_an_stt_model_with_voice_activity_heads_has_a_plan():
    """STT's extra heads are output heads: quantized as the text head is (8 bits in the mixed recipe)."""
    from moshi_mlx.model.stt_presets import stt_preset

    config = stt_preset("stt-1b")
    assert config.extra_heads_num_heads > 0
    for plan in (make_plan(config, 4), make_plan(config, recipe="mixed")):
        heads = {path: spec for path, spec in plan.items() if path.startswith("extra_heads.")}
        assert len(heads) == config.extra_heads_num_heads and all(spec is not None for spec in heads.values())
    assert make_plan(config, recipe="mixed")["extra_heads.0"].bits == 8
