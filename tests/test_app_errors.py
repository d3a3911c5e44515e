"""Every user error of the app is one line on stderr and exit status 1, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

MEMORY = "MOSHI_MLX_TOTAL_MEMORY_GB"


def moshi(*args, env=None, timeout=180):
    full_env = {**os.environ, MEMORY: "64", **(env or {})}
    return subprocess.run([sys.executable, "-m", "moshi_mlx", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def one_line_error(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: "), err
    return err


def test_version_and_help():
    result = moshi("--version")
    assert result.returncode == 0 and result.stdout.startswith("moshi-mlx 0.")
    result = moshi("--help")
    assert result.returncode == 0 and all(name in result.stdout for name in ("chat", "run", "devices", "download"))


def test_the_app_starts_without_mlx_lm():
    # mlx-lm's package imports transformers (over a second): an error or --help comes before it is needed.
    code = ("import sys, moshi_mlx, moshi_mlx.app.chat, moshi_mlx.app.transcribe, moshi_mlx.app.say; "
            "print(sorted(m for m in ('mlx_lm', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", (result.stdout, result.stderr)


def test_unknown_subcommand():
    result = moshi("tlak")
    assert result.returncode == 2
    err = result.stderr.strip()
    from moshi_mlx.app.cli import SUBCOMMANDS

    assert err.startswith(f"error: unknown subcommand 'tlak': use one of {', '.join(SUBCOMMANDS)}")
    assert "\n" not in err


@pytest.fixture
def tiny_args(tiny_model):
    return tiny_model.cli_args()


@pytest.mark.audio
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--input-device", "no such microphone", "error: no audio input device matches 'no such microphone' "
         "(`moshi-mlx devices` lists them)"),
        ("--output-device", "99", "error: no audio output device number 99 (`moshi-mlx devices` lists them)"),
    ],
)
def test_unknown_device(virtual_audio, tiny_args, option, value, message):
    assert one_line_error(moshi("chat", *tiny_args, option, value)) == message


@pytest.mark.skipif(Path("/dev/snd").exists(), reason="this machine has sound cards: there is always a device")
@pytest.mark.parametrize("command", ["chat", "devices"])
def test_no_audio_device(tmp_path, command):
    # No sound card and no reachable sound server: PortAudio lists nothing.
    env = {"PULSE_SERVER": f"unix:{tmp_path}/nothing", "XDG_RUNTIME_DIR": str(tmp_path)}
    err = one_line_error(moshi(command, env=env))
    assert err in ("error: no audio input device found (`moshi-mlx devices` lists what is available)",
                   "error: no audio devices found (is a sound card connected, or the sound server running?)")


@pytest.mark.audio
def test_missing_weights(virtual_audio, tiny_model, tmp_path):
    args = ["--moshi-weights", tmp_path / "nope.safetensors", "--mimi-weights", tiny_model.mimi_weights,
            "--tokenizer", tiny_model.tokenizer, "--config", tiny_model.config]
    assert one_line_error(moshi("chat", *args)) == f"error: Moshi weights not found: {tmp_path}/nope.safetensors"


@pytest.mark.audio
def test_missing_file_offline_names_the_download_command(virtual_audio, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(moshi("chat", "--voice", "moshika", "-q", "8", env=env))
    assert "model.q8.safetensors of kyutai/moshika-mlx-q8 is not in the Hugging Face cache" in err
    assert "`moshi-mlx download --hf-repo kyutai/moshika-mlx-q8 -q 8`" in err


@pytest.mark.audio
def test_weights_that_do_not_fit_the_config(virtual_audio, tiny_model):
    # Without --config the 7B's config is assumed: the tiny tokenizer (checked first, it loads at once) and the
    # tiny checkpoint do not fit it.
    args = ["--moshi-weights", tiny_model.moshi_weights, "--mimi-weights", tiny_model.mimi_weights,
            "--tokenizer", tiny_model.tokenizer]
    err = one_line_error(moshi("chat", *args))
    assert err.startswith(f"error: text tokenizer {tiny_model.tokenizer} has 64 pieces but the model has 32000 ")
    assert "--config" in err
    # The weights alone (no 32000-piece tokenizer can be trained on the fixture's text).
    from moshi_mlx import MoshiError, load_lm

    with pytest.raises(MoshiError, match="model.safetensors does not fit the model config: .*--config"):
        load_lm(tiny_model.moshi_weights)


@pytest.mark.audio
def test_moshi_weights_given_as_mimi_weights(virtual_audio, tiny_model, tiny_args):
    err = one_line_error(moshi("chat", *tiny_args, "--mimi-weights", tiny_model.moshi_weights))
    assert err.startswith(f"error: cannot load Mimi weights {tiny_model.moshi_weights}: ")


@pytest.fixture
def garbage(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"this is not a model file\n" * 10)
    return path


@pytest.mark.audio
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--moshi-weights", "error: cannot read weights {path} as safetensors"),
        ("--tokenizer", "error: cannot load text tokenizer {path}"),
        ("--config", "error: cannot read model config {path}"),
    ],
)
def test_unreadable_model_file(virtual_audio, tiny_args, garbage, option, message):
    err = one_line_error(moshi("chat", *tiny_args, option, garbage))
    assert err.startswith(message.format(path=garbage)), err


@pytest.mark.parametrize("option", ["--transcript", "--record"])
def test_unwritable_output_file(tiny_args, tmp_path, option):
    path = tmp_path / "no" / "such" / "folder" / "out.wav"
    err = one_line_error(moshi("chat", *tiny_args, option, path))
    assert err == f"error: cannot write {path}: its folder does not exist"


def test_transcript_and_recording_in_one_file_are_refused(tiny_args, tmp_path):
    """Both written at once into one file would interleave text and audio into neither."""
    path = tmp_path / "talk.wav"
    err = one_line_error(moshi("chat", *tiny_args, "--transcript", path, "--record", path))
    assert err == f"error: --record {path} is also given to --transcript: give another file name"
    assert not path.exists()


@pytest.mark.audio
def test_chosen_quantization_does_not_fit_memory(virtual_audio, tmp_path):
    env = {MEMORY: "16", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(moshi("chat", "-q", "bf16", env=env))
    assert err == ("error: not enough memory for Moshi bf16: it needs about 17.8 GiB and this machine has "
                   "16.0 GiB; use -q 8")


@pytest.mark.audio
def test_quantization_chosen_from_memory_is_said_in_one_line(virtual_audio, tmp_path):
    env = {MEMORY: "16", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = moshi("chat", env=env)
    said, err = result.stderr.strip().splitlines()
    assert said == "Using q8: 16 GiB of memory fits its 7.6 GiB of weights (-q bf16 / 8 / 4 to choose)"
    assert err.startswith("error: model.q8.safetensors of kyutai/moshiko-mlx-q8 is not in the Hugging Face cache")
    assert result.returncode == 1


@pytest.mark.audio
def test_no_quantization_fits_memory(virtual_audio, tmp_path):
    env = {MEMORY: "6", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(moshi("chat", env=env))
    assert err == "error: not enough memory: Moshi q4 needs about 8.0 GiB and this machine has 6.0 GiB"


def test_download_offline_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(moshi("download", "--voice", "moshika", "-q", "4", env=env))
    assert err == "error: cannot download kyutai/moshika-mlx-q4: HF_HUB_OFFLINE is set; unset it and connect to " \
                  "the internet"


def test_unreadable_input_file_for_run(tmp_path, tiny_args, garbage):
    err = one_line_error(moshi("run", garbage, "--out", tmp_path / "out.wav", *tiny_args))
    assert err.startswith(f"error: cannot read audio file {garbage}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "in.wav", "--out", "o.wav", "-q", "5"],
         "error: argument -q/--quantize/--quant: invalid choice: '5' (choose from '4', '8', 'bf16')"),
        (["chat", "--voice", "bo/b"], "error: argument --voice: 'bo/b' is not a voice name"),
        (["chat", "--model", "moshy"], "error: argument --model: invalid choice: 'moshy'"),
        (["chat", "--max-backlog", "-1"], "error: argument --max-backlog: -1 is negative"),
        (["run", "in.wav", "--out", "o.wav", "--temp", "nan"], "error: argument --temp: nan is not a temperature"),
        (["run", "in.wav", "--out", "o.wav", "--temp-text", "-0.5"],
         "error: argument --temp-text: -0.5 is not a temperature"),
        (["run", "in.wav", "--out", "o.wav", "--seed", "-1"], "error: argument --seed: -1 is negative"),
        (["run", "in.wav", "--out", "o.wav", "--seed", str(2**64)], f"error: argument --seed: {2**64} is too large"),
        (["run", "in.wav"], "error: the following arguments are required: --out"),
        (["devices", "extra"], "error: unrecognized arguments: extra"),
        (["download", "-q", "3"], "error: argument -q/--quantize: invalid choice: '3'"),
    ],
)
def test_command_line_mistakes_are_one_line(capsys, argv, message):
    """Mistyped options: one `error:` line saying where the options are listed, exit 2 as for an unknown subcommand."""
    from moshi_mlx.app import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"(`moshi-mlx {argv[0]} --help` lists the options)") and not captured.out


def test_hf_repo_without_q_uses_the_repos_precision(tmp_path, tiny_model):
    """16 GiB would choose q8, but kyutai/moshiko-mlx-q4 only holds q4: look for that, not model.q8.safetensors."""
    import numpy as np
    import soundfile

    source = tmp_path / "in.wav"
    soundfile.write(str(source), np.zeros(1920, np.float32), 24000)
    env = {MEMORY: "16", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(moshi("run", source, "--out", tmp_path / "out.wav", "--hf-repo", "kyutai/moshiko-mlx-q4",
                               "--config", tiny_model.config, env=env))
    assert err.startswith("error: model.q4.safetensors of kyutai/moshiko-mlx-q4 is not in the Hugging Face cache")
    assert "`moshi-mlx download --hf-repo kyutai/moshiko-mlx-q4 -q 4`" in err
