"""`--dtype bf16|float32` on the commands that load a model: what it loads, what it changes, what it cannot."""

from __future__ import annotations

import hashlib

import mlx.core as mx
import pytest
import soundfile
from mlx.utils import tree_flatten
from moshi_mlx.app import bench, cli
from moshi_mlx.app.model_args import add_model_args, add_sampling_args, load_files, resolve_files
from moshi_mlx.app.parser import Parser

from moshi_mlx import LmConfig
from moshi_mlx.stream.echo.simulator import speech_like

NOTE = ("note: --dtype float32 does not apply to the q4 weights of {}: quantized weights keep their own precision "
        "(their scales and the unquantized tensors load as float32)")


@pytest.fixture(scope="module")
def tiny_q4(tiny_model, tmp_path_factory):
    from moshi_mlx.quantize.quantizer import quantize_checkpoint
    from moshi_mlx.quantize.recipes import make_plan

    config = LmConfig.from_json(tiny_model.config)
    return quantize_checkpoint(tiny_model.moshi_weights, tmp_path_factory.mktemp("q4"), config,
                               make_plan(config, 4))


def load(argv: list[str]):
    parser = Parser(prog="moshi-mlx test")
    add_model_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    return load_files(args, resolve_files(args))


def dtypes(lm) -> dict[str, mx.Dtype]:
    return {name: value.dtype for name, value in tree_flatten(lm.parameters())}


def test_float32_loads_every_float_parameter_as_float32(tiny_model, capsys):
    for dtype, expected in (("bf16", mx.bfloat16), ("float32", mx.float32)):
        pipeline = load([*tiny_model.cli_args(), "--mimi", "mlx", "--dtype", dtype])
        try:
            assert set(dtypes(pipeline.gen.lm).values()) == {expected}
        finally:
            pipeline.close()
    assert "note:" not in capsys.readouterr().err  # a float checkpoint takes either precision


def test_quantized_weights_keep_their_bits_and_say_so(tiny_model, tiny_q4, capsys):
    args = ["--moshi-weights", str(tiny_q4.weights), "--config", str(tiny_q4.config), "--mimi-weights",
            str(tiny_model.mimi_weights), "--tokenizer", str(tiny_model.tokenizer), "--mimi", "mlx"]
    pipeline = load([*args, "--dtype", "float32"])
    try:
        found = dtypes(pipeline.gen.lm)
    finally:
        pipeline.close()
    packed = {name for name in found if name.removesuffix(".weight") + ".scales" in found}
    assert packed and all(found[name] == mx.uint32 for name in packed)
    # What the note says: the scales and the tensors left unquantized (norms) are float32.
    assert {dtype for name, dtype in found.items() if name not in packed} == {mx.float32}
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [NOTE.format("model.q4.safetensors")]

    load([*args]).close()  # bf16, the default: nothing to say
    assert "note:" not in capsys.readouterr().err


def run_output(tiny_model, tmp_path, dtype: str) -> str:
    source, out = tmp_path / "in.wav", tmp_path / f"out_{dtype}.wav"
    soundfile.write(source, speech_like(1.0, seed=3), 24000, subtype="PCM_16")
    cli.main(["run", str(source), "--out", str(out), "--seed", "0", "--quiet", "--mimi", "mlx", "--dtype", dtype,
              *tiny_model.cli_args()])
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_run_in_float32_differs_from_bf16(tiny_model, tmp_path):
    """The tiny checkpoint is float32: bf16 rounds it, float32 keeps it, and the voice changes."""
    assert run_output(tiny_model, tmp_path, "float32") != run_output(tiny_model, tmp_path, "bf16")


def test_bench_random_model_in_float32(capsys):
    assert set(dtypes(bench.random_lm("tiny", "bf16", mx.float32)).values()) == {mx.float32}
    q4 = dtypes(bench.random_lm("tiny", "4", mx.float32))
    assert {dtype for name, dtype in q4.items() if name.endswith(".scales")} == {mx.float32}
    bench.main(["--model", "tiny", "--frames", "2", "--dtype", "float32", "--mimi", "mlx"])
    captured = capsys.readouterr()
    assert captured.out.startswith("moshi-mlx bench: tiny q4,")
    assert captured.err.splitlines() == [NOTE.format("the random tiny")]


@pytest.mark.parametrize("command", [["run", "in.wav", "--out", "o.wav"], ["chat"], ["bench"]])
def test_other_dtypes_are_refused(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--dtype", "float16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"error: argument --dtype: invalid choice: 'float16' (choose from 'bf16', 'float32') "
                   f"(`moshi-mlx {command[0]} --help` lists the options)\n")
