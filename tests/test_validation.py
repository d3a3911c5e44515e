"""Bad input never costs a traceback or a file: every subcommand checks what it can before work starts, and no
output may be one of its inputs. One table-driven test per class of mistake, over every subcommand that takes it.

Cases run in-process through `moshi_mlx.app.cli.main` and are refused before any model loads, except where the
mistake is inside the weights (then the tiny model loads). Only the network and SIGTERM tests start processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile
from helpers import RefusingHub
from moshi_mlx.app import checks, cli
from moshi_mlx.app.parser import Parser

from moshi_mlx import LmConfig, MoshiError, load_lm
from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm
from moshi_mlx.devtools.tiny_tokenizer import write_tiny_tokenizer

MEMORY = "MOSHI_MLX_TOTAL_MEMORY_GB"
FRAME = 1920


# --- helpers -------------------------------------------------------------------------------------------------


class _Captured(BaseException):  # not an Exception: the CLI would report it as a failure and log it
    pass


def subcommand_parser(name: str) -> Parser | None:
    """The parser a subcommand builds, caught as it starts parsing (None if it does not use app.parser.Parser)."""
    found = {}
    original = Parser.parse_args

    def capture(self, *args, **kwargs):
        found["parser"] = self
        raise _Captured

    Parser.parse_args = capture
    try:
        cli.main([name])
    except _Captured:
        pass
    except SystemExit:
        pass
    finally:
        Parser.parse_args = original
    return found.get("parser")


PARSERS = {name: subcommand_parser(name) for name in cli.SUBCOMMANDS}


def free_form(parser) -> list:
    """Options that take any text: the ones that may name a file."""
    return [a for a in parser._actions
            if a.nargs != 0 and a.choices is None and a.type in (None, str) and a.dest != "help"]


def role_actions(name: str, role: str) -> list:
    return [a for a in free_form(PARSERS[name]) if checks.FILE_ROLES.get(a.dest) == role]


def argv_of(name: str, values: dict[str, object]) -> list[str]:
    """A command line giving each dest its value (positionals first)."""
    parser = PARSERS[name]
    argv = [name]
    actions = {a.dest: a for a in parser._actions}
    for dest, value in values.items():
        if value is None or actions[dest].option_strings:
            continue
        argv.append(str(value))
    for dest, value in values.items():
        action = actions[dest]
        if value is not None and action.option_strings:
            argv += [action.option_strings[-1]] + ([] if value is True else [str(value)])
    return argv


def cli_error(capsys, argv: list[str], code: int = 1) -> str:
    """Run the command in-process; it must end with one `error:` line and exit status `code`."""
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert e.value.code == code, (e.value.code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def fingerprint(path: Path) -> tuple:
    st = path.stat()
    head = path.read_bytes() if st.st_size < 1 << 20 else path.open("rb").read(1 << 16)
    return st.st_size, st.st_mtime_ns, head


def write_wav(path: Path, seconds: float = 0.3, nan_at: list[int] | None = None, value: float = np.nan) -> Path:
    t = np.arange(int(seconds * 24000)) / 24000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for i in nan_at or []:
        audio[i] = value
    soundfile.write(str(path), audio, 24000, subtype="FLOAT")
    return path


QCONFIG = tiny_config(dim=64, hidden_scale=3, depformer_dim=64, depformer_dim_feedforward=192)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory) -> tuple[Path, Path]:
    """A small bf16 checkpoint (Kyutai's PyTorch names) and its config, for quantize."""
    return write_random_lm(tmp_path_factory.mktemp("bf16"), QCONFIG, seed=3, layout="pytorch-fused")


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    return write_wav(tmp_path_factory.mktemp("wav") / "in.wav")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """In-process cases never touch the network (as HF_HUB_OFFLINE=1); the subprocess cases set their own hub."""
    from huggingface_hub import constants

    from moshi_mlx import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_reachable", None)


@pytest.fixture
def no_devices(monkeypatch):
    """chat without a sound card: every case here is refused before the devices would be opened."""
    from moshi_mlx.app import chat

    monkeypatch.setattr(chat, "find_device", lambda spec, kind: None)
    monkeypatch.setenv(MEMORY, "64")


def base_values(name: str, tmp: Path, tiny_model, bf16, wav) -> dict[str, object]:
    """A valid command line for each subcommand with every file option given (outputs in `tmp`)."""
    model = {"moshi_weights": tiny_model.moshi_weights, "mimi_weights": tiny_model.mimi_weights,
             "tokenizer": tiny_model.tokenizer, "config": tiny_model.config}
    if name in ("run", "chat"):
        role = tmp.parent / f"{tmp.name}-role.txt"  # beside `tmp`: the tests count what is left in it
        role.write_text("You are a pirate.\n")
        model.update(persona_file=role, voice_prompt=wav)
    if name == "run":
        return {"input": wav, "out": tmp / "out.wav", "transcript": tmp / "t.txt", **model}
    if name == "chat":
        return {"transcript": tmp / "t.txt", "record": tmp / "rec.wav", **model}
    if name == "transcribe":  # refused before the model is read: a Moshi checkpoint does here
        return {"input": wav, "out": tmp / "out.srt", "transcript": tmp / "t.txt", **model}
    if name == "quantize":
        return {"input": bf16[0], "output": tmp / "q", "config": bf16[1], "wav": wav,
                "mimi_weights": tiny_model.mimi_weights, "report_json": tmp / "report.json"}
    if name == "say":
        text = tmp.parent / f"{tmp.name}-say.txt"  # beside `tmp`: the tests count what is left in it
        text.write_text("Hello there.\n")
        return {"file": text, "out": tmp / "out.wav", **model}
    raise AssertionError(f"`{name}` has file options: give it a valid command line here")


SPELLINGS = ("same", "dotted", "symlink", "hardlink")


def spell(path: Path, how: str, tmp: Path) -> Path | str:
    """Another name for the same file."""
    path = Path(path)
    if how == "same":
        return path
    if how == "dotted":
        return f"{path.parent}/../{path.parent.name}/./{path.name}"
    alias = tmp / f"alias-{how}{path.suffix}"
    if how == "symlink":
        alias.symlink_to(path)
    else:
        os.link(path, alias)
    return alias


# --- 1. no output is an input, by identity, in every subcommand ----------------------------------------------


def test_every_subcommand_uses_the_one_line_parser_and_classifies_its_file_options():
    """A new option that takes text must say in checks.FILE_ROLES whether it names an input or an output."""
    for name, parser in PARSERS.items():
        assert parser is not None, f"`moshi-mlx {name}` does not parse with moshi_mlx.app.parser.Parser"
        unclassified = [a.dest for a in free_form(parser) if a.dest not in checks.FILE_ROLES]
        assert not unclassified, f"`moshi-mlx {name}`: add {unclassified} to moshi_mlx.app.checks.FILE_ROLES"
    classified = {a.dest for p in PARSERS.values() for a in p._actions if a.dest in checks.FILE_ROLES}
    assert classified == set(checks.FILE_ROLES), set(checks.FILE_ROLES) - classified


def _identity_cases():
    cases = []
    for name in PARSERS:
        inputs = [a.dest for a in role_actions(name, checks.INPUT)]
        for out in role_actions(name, checks.OUTPUT):
            cases += [(name, out.dest, i, how) for i in inputs for how in SPELLINGS]
            others = [a.dest for a in role_actions(name, checks.OUTPUT) if a.dest != out.dest]
            cases += [(name, out.dest, o, how) for o in others for how in ("same", "hardlink")]
        for out in role_actions(name, checks.OUTPUT_DIR):
            cases += [(name, out.dest, i, how) for i in inputs for how in ("symlink", "hardlink")]
    return cases


IDENTITY_CASES = _identity_cases()


@pytest.mark.parametrize("name, output, target, how", IDENTITY_CASES)
def test_no_output_is_an_input(name, output, target, how, tiny_model, bf16, wav, tmp_path, capsys, no_devices):
    """Each output option of each subcommand, naming each of its inputs (or another output) under another name:
    refused in one line, before anything is written; the file is untouched."""
    values = base_values(name, tmp_path, tiny_model, bf16, wav)
    target_path = Path(values[target])
    if not target_path.exists():  # another output: it exists from an earlier run
        target_path.write_text("earlier output\n")
    before = fingerprint(target_path)
    if checks.FILE_ROLES[output] == checks.OUTPUT_DIR:
        folder = Path(values[output])  # a folder whose config.json is the input, under another name
        folder.mkdir()
        (folder / "config.json").symlink_to(target_path) if how == "symlink" else os.link(target_path,
                                                                                            folder / "config.json")
    else:
        values[output] = spell(target_path, how, tmp_path)
    err = cli_error(capsys, argv_of(name, values))
    assert "give another file name" in err or "choose another output folder" in err, err
    assert fingerprint(target_path) == before
    left = {p.name for p in tmp_path.rglob("*")} - {"alias-symlink" + target_path.suffix,
                                                     "alias-hardlink" + target_path.suffix, "q", "config.json"}
    assert left <= {target_path.name}, left


@pytest.mark.parametrize("name", ["run", "chat"])
@pytest.mark.parametrize("cached", ["model.q4.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors",
                                    "tokenizer_spm_32k_3.model"])
def test_no_output_is_a_file_of_the_hugging_face_cache(name, cached, wav, tmp_path, capsys, monkeypatch,
                                                       no_devices):
    """Files found in the cache are inputs too: an output naming one (here through its snapshot path, as
    `huggingface-cli scan-cache` shows it) is refused before anything loads."""
    from huggingface_hub import constants
    from test_hub import cache_repo

    files = {n: f"cached {n}".encode() for n in ("model.q4.safetensors", "tokenizer_spm_32k_3.model",
                                                 "tokenizer-e351c8d8-checkpoint125.safetensors")}
    snapshot = cache_repo(tmp_path / "hf", "kyutai/moshiko-mlx-q4", files)
    no_config = snapshot.parent.parent / ".no_exist" / snapshot.name
    no_config.mkdir(parents=True)
    (no_config / "config.json").touch()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    target = snapshot / cached
    output = ["--out", target] if name == "run" else ["--record", target]
    err = cli_error(capsys, [name, *([wav] if name == "run" else []), *output, "-q", "4"])
    assert err.startswith(f"error: {output[0]} {target} is the ") and "give another file name" in err, err
    assert target.read_bytes() == f"cached {cached}".encode()


def test_identity_cases_cover_every_output_of_every_subcommand():
    covered = {(name, out) for name, out, _, _ in IDENTITY_CASES}
    for name in PARSERS:
        if not role_actions(name, checks.INPUT):  # e.g. bench: an output cannot be an input it does not have
            continue
        for role in (checks.OUTPUT, checks.OUTPUT_DIR):
            for action in role_actions(name, role):
                assert (name, action.dest) in covered, (name, action.dest)
    assert len(IDENTITY_CASES) >= 100


# --- 2. nothing is opened before everything that can be checked is ------------------------------------------


def _bad_config(tiny_model, tmp: Path, **change) -> Path:
    path = tmp / "bad_config.json"
    path.write_text(json.dumps({**json.loads(tiny_model.config.read_text()), **change}))
    return path


def _bad_weights(tiny_model, tmp: Path, how: str) -> Path:
    weights = mx.load(str(tiny_model.moshi_weights))
    if how == "int":
        weights = {k: (v * 100).astype(mx.int32) for k, v in weights.items()}
    elif how == "nan":
        weights = {k: mx.full(v.shape, float("nan"), v.dtype) for k, v in weights.items()}
    path = tmp / f"{how}.safetensors"
    mx.save_safetensors(str(path), weights)
    return path


def _small_tokenizer(tmp: Path, size: int) -> Path:
    return write_tiny_tokenizer(tmp / f"tok{size}.model", vocab_size=size)


EARLY_FAILURES = {
    "config context -1": lambda m, t: ["--config", _bad_config(m, t, context=-1)],
    "config dim a string": lambda m, t: ["--config", _bad_config(m, t, dim="32")],
    "config num_heads 0": lambda m, t: ["--config", _bad_config(m, t, num_heads=0)],
    "config negative delay": lambda m, t: ["--config", _bad_config(m, t, delays=[0, 0] + [-1] * 15)],
    "integer weights": lambda m, t: ["--moshi-weights", _bad_weights(m, t, "int")],
    "all-NaN weights": lambda m, t: ["--moshi-weights", _bad_weights(m, t, "nan")],
    "tokenizer of another size": lambda m, t: ["--tokenizer", _small_tokenizer(t, 48)],
    "transcript name too long": lambda m, t: ["--transcript", t / ("x" * 300 + ".txt")],
    "transcript in a missing folder": lambda m, t: ["--transcript", t / "none" / "t.txt"],
    "transcript is a folder": lambda m, t: ["--transcript", t],
}


@pytest.mark.parametrize("name", ["run", "chat"])
@pytest.mark.parametrize("cause", list(EARLY_FAILURES))
def test_earlier_outputs_survive_a_refused_run(name, cause, tiny_model, wav, tmp_path, capsys, no_devices):
    """Files from an earlier run stay as they were when the new one is refused, whatever the mistake."""
    audio_out = tmp_path / ("out.wav" if name == "run" else "rec.wav")
    transcript = tmp_path / "t.txt"
    audio_out.write_bytes(b"earlier recording")
    transcript.write_text("earlier words\n")
    kept = fingerprint(audio_out), fingerprint(transcript)
    first = [wav, "--out", audio_out] if name == "run" else ["--record", audio_out]
    argv = [name, *first, "--transcript", transcript, *tiny_model.cli_args(), *EARLY_FAILURES[cause](tiny_model,
                                                                                                     tmp_path)]
    cli_error(capsys, argv)
    assert (fingerprint(audio_out), fingerprint(transcript)) == kept


def test_nan_audio_leaves_earlier_outputs(tiny_model, tmp_path, capsys):
    out, transcript = tmp_path / "out.wav", tmp_path / "t.txt"
    out.write_bytes(b"earlier"), transcript.write_text("earlier\n")
    source = write_wav(tmp_path / "nan.wav", nan_at=[100])
    err = cli_error(capsys, ["run", source, "--out", out, "--transcript", transcript, *tiny_model.cli_args()])
    assert "NaN or infinite" in err and out.read_bytes() == b"earlier" and transcript.read_text() == "earlier\n"


# --- 3. the config schema: types, ranges, consistency -------------------------------------------------------

BAD_CONFIGS = [
    (None, "null"),
    ([1, 2], "not a JSON object"),
    ("dim", "not a JSON object"),
    ({"dim": -32}, "dim -32: expected a whole number from 1 to 65536"),
    ({"dim": 10**9}, "dim 1000000000: expected a whole number from 1"),
    ({"dim": "32"}, "dim '32': expected a whole number"),
    ({"dim": None}, "dim is null: expected a whole number"),
    ({"dim": 32.5}, "dim 32.5: expected a whole number"),
    ({"dim": True}, "dim True: expected a whole number"),
    ({"num_heads": 0}, "num_heads 0: expected a whole number from 1"),
    ({"num_heads": 3}, "dim 32 is not divisible by num_heads 3"),
    ({"num_layers": "2"}, "num_layers '2': expected a whole number"),
    ({"num_layers": 0}, "num_layers 0"),
    ({"hidden_scale": -1}, "hidden_scale -1: expected a number from"),
    ({"hidden_scale": "4"}, "hidden_scale '4'"),
    ({"depformer_dim": 0}, "depformer_dim 0: expected a whole number from 1"),
    ({"depformer_num_heads": 5}, "depformer_dim 16 is not divisible by depformer_num_heads 5"),
    ({"depformer_dim_feedforward": -40}, "depformer_dim_feedforward -40"),
    ({"context": -1}, "context -1: expected a whole number from 1 to 16777216 or null"),
    ({"context": 0}, "context 0"),
    ({"context": "3000"}, "context '3000'"),
    ({"delays": [0, -1] + [1] * 15}, "not -1"),
    ({"delays": "0"}, "delays '0': expected a list"),
    ({"delays": [0, 1]}, "2 delays for 17 streams"),
    ({"delays": [0, 0.5] + [1] * 15}, "not 0.5"),
    ({"text_card": 0}, "text_card 0"),
    ({"card": -1}, "card -1"),
    ({"n_q": 0}, "n_q 0"),
    ({"dep_q": 20}, "dep_q 20 > n_q 16"),
    ({"causal": "yes"}, "causal 'yes': expected true or false"),
    ({"max_period": 0}, "max_period 0"),
    ({"layer_scale": -1}, "layer_scale -1"),
    ({"existing_text_padding_id": 64}, "existing_text_padding_id 64 is not below text_card 64"),
    ({"norm": 3}, "norm 3: expected one of rms_norm_f32, rms_norm, layer_norm, layer_norm_f32"),
    ({"gating": None}, "gating is null: expected one of silu, none"),
    ({"positional_embedding": "alibi"}, "positional_embedding 'alibi': expected one of rope, sin, sin_rope, none"),
    ({"depformer_weights_per_step_schedule": [0, 1, 2, 3, 4, 5, 6, 9]}, "depformer_weights_per_step_schedule"),
    ({"depformer_low_rank_embeddings": 0}, "depformer_low_rank_embeddings 0"),
]


def _config_text(tiny_model, bad) -> str:
    if isinstance(bad, dict):
        return json.dumps({**json.loads(tiny_model.config.read_text()), **bad})
    return json.dumps(bad)


@pytest.mark.parametrize("name", ["library", "run", "chat", "quantize"])
@pytest.mark.parametrize("bad, words", BAD_CONFIGS)
def test_config_values_of_the_wrong_type_or_range(name, bad, words, tiny_model, bf16, wav, tmp_path, capsys,
                                                  no_devices):
    """One line naming the key, the value and what is expected; never a traceback."""
    config = tmp_path / "config.json"
    config.write_text(_config_text(tiny_model, bad))
    if name == "library":
        with pytest.raises(MoshiError) as e:
            LmConfig.from_json(config)
        err = str(e.value)
    elif name == "quantize":
        err = cli_error(capsys, ["quantize", bf16[0], "--config", config, "-o", tmp_path / "q"])
        assert not (tmp_path / "q").exists()
    else:
        first = [wav, "--out", tmp_path / "o.wav"] if name == "run" else []
        err = cli_error(capsys, [name, *first, *tiny_model.cli_args(), "--config", config])
        assert not (tmp_path / "o.wav").exists()
    assert f"invalid model config {config}: " in err and words in err and "\n" not in err, err


# --- 4. what would have given wrong results without a word --------------------------------------------------

BAD_TEMPERATURES = ["1e46", "101", "1e400", "inf", "-inf", "nan", "-1", "hot"]


@pytest.mark.parametrize("name", ["run", "chat"])
@pytest.mark.parametrize("option", ["--temp", "--temp-text"])
@pytest.mark.parametrize("value", BAD_TEMPERATURES)
def test_temperatures_out_of_range(name, option, value, capsys):
    first = ["in.wav", "--out", "o.wav"] if name == "run" else []
    err = cli_error(capsys, [name, *first, f"{option}={value}"], code=2)
    assert err.startswith(f"error: argument {option}: ") and ("not a temperature" in err or "not a number" in err)


@pytest.mark.parametrize("name", ["run", "chat"])
@pytest.mark.parametrize("size", [48, 80])
def test_tokenizer_that_does_not_fit_text_card(name, size, tiny_model, wav, tmp_path, capsys, no_devices):
    first = [wav, "--out", tmp_path / "o.wav"] if name == "run" else []
    tokenizer = _small_tokenizer(tmp_path, size)
    err = cli_error(capsys, [name, *first, *tiny_model.cli_args(), "--tokenizer", tokenizer])
    assert err == (f"error: text tokenizer {tokenizer} has {size} pieces but the model has 64 text tokens "
                   "(text_card): give this model's tokenizer (--tokenizer) or its config (--config)")


@pytest.mark.parametrize(
    "damage",
    ["all NaN", "one NaN", "one inf", "one -inf", "NaN in a norm"],
)
def test_weights_with_nan_or_inf_are_refused(damage, tiny_model, tmp_path):
    weights = mx.load(str(tiny_model.moshi_weights))
    name = "transformer.layers.0.norm1.weight" if damage == "NaN in a norm" else "text_linear.weight"
    value = {"one inf": float("inf"), "one -inf": float("-inf")}.get(damage, float("nan"))
    if damage == "all NaN":
        weights = {k: mx.full(v.shape, value, v.dtype) for k, v in weights.items()}
    else:
        flat = mx.array(weights[name]).reshape(-1)
        flat[5] = value
        weights[name] = flat.reshape(weights[name].shape)
    path = tmp_path / "damaged.safetensors"
    mx.save_safetensors(str(path), weights)
    with pytest.raises(MoshiError, match="damaged: tensor '.*' holds NaN or infinite values") as e:
        load_lm(path, LmConfig.from_json(tiny_model.config))
    if damage != "all NaN":
        assert f"'{name}'" in str(e.value)


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "bool", "int64", "uint32"])
def test_integer_weights_are_refused(dtype, tiny_model, tmp_path):
    weights = mx.load(str(tiny_model.moshi_weights))
    weights["out_norm.weight"] = weights["out_norm.weight"].astype(getattr(mx, "bool_" if dtype == "bool" else dtype))
    path = tmp_path / "ints.safetensors"
    mx.save_safetensors(str(path), weights)
    with pytest.raises(MoshiError, match=f"tensor 'out_norm.weight' is {dtype}, expected floating point"):
        load_lm(path, LmConfig.from_json(tiny_model.config))


@pytest.mark.parametrize("where, value", [([0], np.nan), ([4000, 4001], np.nan), ([7000], np.inf),
                                          ([10], -np.inf), (list(range(7200)), np.nan)])
@pytest.mark.parametrize("name", ["run", "quantize"])
def test_nan_samples_in_the_input_audio(name, where, value, tiny_model, bf16, tmp_path, capsys):
    source = write_wav(tmp_path / "in.wav", nan_at=where, value=value)
    if name == "run":
        argv = ["run", source, "--out", tmp_path / "o.wav", *tiny_model.cli_args()]
    else:
        argv = ["quantize", bf16[0], "-o", tmp_path / "q", "--wav", source, "--mimi-weights", tiny_model.mimi_weights]
    err = cli_error(capsys, argv)
    assert err == (f"error: audio file {source} is damaged: {len(where)} samples are NaN or infinite (the first at "
                   f"{where[0] / 24000:.2f} s); repair or re-export it")
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def tiny_q4(tiny_model, tmp_path_factory):
    from moshi_mlx.quantize.quantizer import quantize_checkpoint
    from moshi_mlx.quantize.recipes import make_plan

    config = LmConfig.from_json(tiny_model.config)
    return quantize_checkpoint(tiny_model.moshi_weights, tmp_path_factory.mktemp("q4"), config,
                               make_plan(config, 4))


@pytest.mark.parametrize("q, note", [("8", "it holds q4 weights"), ("bf16", "it holds q4 weights"), ("4", None)])
def test_q_that_does_not_match_a_local_file_is_said(q, note, tiny_model, tiny_q4, wav, tmp_path, capsys,
                                                    monkeypatch):
    monkeypatch.setenv(MEMORY, "64")
    args = ["--moshi-weights", tiny_q4.weights, "--config", tiny_q4.config, "--mimi-weights",
            tiny_model.mimi_weights, "--tokenizer", tiny_model.tokenizer]
    cli.main(["run", str(wav), "--out", str(tmp_path / "o.wav"), "--quiet", "-q", q, *map(str, args)])
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    if note is None:
        assert notes == []
    else:
        assert notes == [f"note: -q {q} does not apply to --moshi-weights model.q4.safetensors: {note}, used as "
                         "they are"]
    assert (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("value", ["lots", "nan", "inf", "-8", "0"])
@pytest.mark.parametrize("name", ["run", "chat", "quantize"])
def test_memory_override_that_is_not_a_size(name, value, tiny_model, bf16, wav, tmp_path, capsys, monkeypatch,
                                            no_devices):
    monkeypatch.setenv(MEMORY, value)
    argv = {"run": ["run", wav, "--out", tmp_path / "o.wav", "-q", "4"], "chat": ["chat", "-q", "8"],
            "quantize": ["quantize", bf16[0], "-o", tmp_path / "q"]}[name]
    err = cli_error(capsys, argv)
    assert err == f"error: {MEMORY}={value!r} is not a number of GiB"


# --- 5. quantize checks every option before reading a tensor -----------------------------------------------

QUANTIZE_MISTAKES = [
    (["--steps", "100000000"], 1, "--steps 100000000 does not fit in 16.0 GiB of memory for the report: use at most"),
    (["--steps", "1"], 1, "--steps must be at least 2"),
    (["--steps", "-1"], 2, "argument --steps: -1 is negative"),
    (["--steps", "many"], 2, "argument --steps: 'many' is not a whole number"),
    (["--seed", "-1"], 2, "argument --seed: -1 is negative"),
    (["--seed", str(2**64)], 2, "argument --seed: 18446744073709551616 is too large"),
    (["--seed", "1.5"], 2, "argument --seed: '1.5' is not a whole number"),
    (["--bits", "5"], 2, "argument --bits: invalid choice: 5"),
    (["--bits", "four"], 2, "argument --bits: invalid int value: 'four'"),
    (["--group-size", "7"], 2, "argument --group-size: invalid choice: 7"),
    (["--recipe", "best"], 2, "argument --recipe: invalid choice: 'best'"),
    (["--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
    (["--report-json", "{tmp}"], 1, "cannot write {tmp}: it is a folder; give a file name"),
    (["--report-json", "{tmp}/none/r.json"], 1, "cannot write {tmp}/none/r.json: its folder does not exist"),
    (["--report-json", "{tmp}/" + "x" * 300], 1, "cannot write {tmp}/" + "x" * 300 + ": file name too long"),
    (["--report-json", "{input}"], 1, "--report-json {input} is the input checkpoint: give another file name"),
    (["--report-json", "{tmp}/q/model.q4.safetensors"], 1,
     "--report-json {tmp}/q/model.q4.safetensors is the quantized model: give another file name"),
    (["--report-json", "{tmp}/q/config.json"], 1, "--report-json {tmp}/q/config.json is its config.json"),
    (["-o", "{tmp}/file"], 1, "-o {tmp}/file is a file: give a folder to write into"),
    (["-o", "{tmp}/file/sub"], 1, "cannot make -o {tmp}/file/sub: {tmp}/file is a file"),
    (["--wav", "{tmp}/missing.wav"], 1, "audio file not found: {tmp}/missing.wav"),
    (["--wav", "{tmp}/file"], 1, "cannot read audio file {tmp}/file"),
    (["--wav", "{tmp}"], 1, "{tmp} is a folder, not an audio file"),
    (["--wav", "{tmp}/short.wav"], 1, "--wav {tmp}/short.wav is shorter than two 80 ms frames"),
    (["--wav", "{tmp}/in.wav", "--mimi-weights", "{tmp}/none.safetensors"], 1,
     "Mimi weights not found: {tmp}/none.safetensors"),
    (["--mimi-weights", "{tmp}/file"], 1, "--mimi-weights encodes --wav: give --wav too"),
    (["--wav", "{tmp}/in.wav", "--seed", "3"], 1, "--seed draws random codes, --wav replaces them"),
    (["--no-report", "--steps", "8"], 1, "--steps is for the quality report, which --no-report skips"),
    (["--no-report", "--report-json", "{tmp}/r.json"], 1, "--report-json is for the quality report"),
    (["--no-report", "--report"], 1, "--report and --no-report exclude each other"),
    (["--recipe", "mixed", "--bits", "8"], 1, "--recipe mixed sets its own bits per module: drop --bits"),
    (["--config", "{tmp}/none.json"], 1, "model config not found: {tmp}/none.json"),
    (["--config", "{tmp}/file"], 1, "cannot read model config {tmp}/file"),
]


@pytest.mark.parametrize("options, code, message", QUANTIZE_MISTAKES)
def test_quantize_checks_every_option_first(options, code, message, bf16, tmp_path, capsys, monkeypatch):
    """Refused in one line before a tensor is read: an earlier output folder keeps its files, nothing is added."""
    monkeypatch.setenv(MEMORY, "16")
    (tmp_path / "file").write_text("not a folder\n")
    write_wav(tmp_path / "in.wav"), write_wav(tmp_path / "short.wav", seconds=0.1)
    earlier = tmp_path / "q"
    earlier.mkdir()
    (earlier / "model.q4.safetensors").write_bytes(b"earlier model")
    (earlier / "config.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def fill(text):
        return text.replace("{tmp}", str(tmp_path)).replace("{input}", str(bf16[0]))

    err = cli_error(capsys, ["quantize", bf16[0], "-o", earlier, *map(fill, options)], code=code)
    assert err.startswith(f"error: {fill(message)}"), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (earlier / "model.q4.safetensors").read_bytes() == b"earlier model"


@pytest.mark.parametrize("checkpoint, message", [
    ("audio", "{path} is not a safetensors file"),
    ("integers", "the input has a I32 tensor 'text_emb.weight': not a Moshi bf16 checkpoint"),
    ("quantized", "the input is already quantized"),
    ("other model", "wrong --config"),
    ("empty", "{path} is not a safetensors file"),
])
def test_quantize_checks_the_checkpoint_first(checkpoint, message, bf16, wav, tmp_path, capsys):
    """The input's header (dtypes, names, shapes) is checked against the config before the output folder is made."""
    path = tmp_path / "in.safetensors"
    weights = mx.load(str(bf16[0]))
    if checkpoint == "audio":
        path.write_bytes(wav.read_bytes())
    elif checkpoint == "empty":
        path.write_bytes(b"")
    elif checkpoint == "integers":
        mx.save_safetensors(str(path), {**weights, "text_emb.weight": weights["text_emb.weight"].astype(mx.int32)})
    elif checkpoint == "quantized":
        w, scales, biases = mx.quantize(weights["text_emb.weight"], group_size=32, bits=4)
        mx.save_safetensors(str(path), {**weights, "text_emb.weight": w, "text_emb.scales": scales,
                                        "text_emb.biases": biases})
    else:
        write_random_lm(tmp_path / "other", tiny_config(dim=128, hidden_scale=3, depformer_dim=64,
                                                        depformer_dim_feedforward=192), seed=0)
        path = tmp_path / "other" / "model.safetensors"
    err = cli_error(capsys, ["quantize", path, "--config", bf16[1], "-o", tmp_path / "q"])
    assert message.format(path=path) in err, err
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_a_plan_that_quantizes_nothing(tmp_path, capsys):
    weights, config = write_random_lm(tmp_path / "tiny", tiny_config(), seed=0)  # no row is a multiple of 128
    err = cli_error(capsys, ["quantize", weights, "--config", config, "-o", tmp_path / "q", "--group-size", "128"])
    assert err.startswith("error: nothing to quantize: no module of this model has rows that split into groups of 128")
    assert not (tmp_path / "q").exists()


def test_quantize_sigterm_cleans_up_as_ctrl_c(tmp_path):
    """kill during quantization: exit 130 as Ctrl-C, and no .partial file left."""
    config = tiny_config(dim=256, num_heads=4, num_layers=24, hidden_scale=3, text_card=1000, card=1024,
                         depformer_dim=128, depformer_dim_feedforward=384, depformer_num_heads=2)
    weights, config_path = write_random_lm(tmp_path / "in", config, seed=0)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "moshi_mlx", "quantize", str(weights), "--config",
                                str(config_path), "-o", str(out), "--no-report"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out / "model.q4.safetensors.partial"
    deadline = time.monotonic() + 120
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert partial.exists(), "quantization ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().endswith("interrupted") and "Traceback" not in err
    assert not partial.exists() and not (out / "model.q4.safetensors").exists()


# --- 6. Hugging Face Hub: repo ids, and a missing network found once, quickly ------------------------------

BAD_REPO_IDS = ["a--b/c", "a/b/c", "-a/b", "a/b-", "a/b.git", "a b/c", "a/b..c", "a/", "/b", "x" * 97 + "/y",
                "kyutai/moshiko-mlx-q4?"]


@pytest.mark.parametrize("name", ["run", "chat", "download", "quantize"])
@pytest.mark.parametrize("repo", BAD_REPO_IDS)
def test_invalid_repo_ids(name, repo, tmp_path, capsys):
    if name == "quantize":  # the input is a path or a repo id
        err = cli_error(capsys, ["quantize", "-o", tmp_path / "q", "--", repo])
        assert "not a Hugging Face repo id" in err or err.startswith(f"error: input not found: {repo}"), err
        return
    first = ["in.wav", "--out", "o.wav"] if name == "run" else []
    err = cli_error(capsys, [name, *first, f"--hf-repo={repo}"], code=2)
    assert err.startswith(f"error: argument --hf-repo: {repo!r} is not a Hugging Face repo id: owner/name"), err


class BlackHole:
    """A hub that takes connections and never answers (a network dropping packets)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def close(self):
        self.server.close()


NETWORK_COMMANDS = {
    "run": lambda t: ["run", write_wav(t / "in.wav"), "--out", t / "o.wav", "-q", "4"],
    "download": lambda t: ["download", "-q", "4"],
    "quantize": lambda t: ["quantize", "kyutai/moshiko-pytorch-bf16", "-o", t / "q"],
    "run --hf-repo": lambda t: ["run", write_wav(t / "in.wav"), "--out", t / "o.wav", "--hf-repo", "someone/moshi"],
}


@pytest.mark.parametrize("network", ["refusing", "black hole"])
@pytest.mark.parametrize("command", list(NETWORK_COMMANDS))
def test_no_network_is_found_once_and_quickly(command, network, tmp_path):
    """Nothing cached, network down: one line within seconds (huggingface_hub alone retries for ~50 s per file,
    and forever on a network that drops packets), after at most one connection to the hub."""
    hub = RefusingHub() if network == "refusing" else BlackHole()
    env = {**os.environ, MEMORY: "64", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url}
    for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    start = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "moshi_mlx", *map(str, NETWORK_COMMANDS[command](tmp_path))],
                                env=env, capture_output=True, text=True, timeout=60)
    finally:
        hub.close()
    elapsed = time.monotonic() - start
    err = result.stderr.strip()
    assert result.returncode == 1 and err.startswith("error: ") and "\n" not in err, err
    assert f"{hub.url} cannot be reached" in err, err
    assert elapsed < 15, elapsed
    if isinstance(hub, RefusingHub):
        assert hub.connections <= 1
