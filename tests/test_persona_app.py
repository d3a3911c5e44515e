"""`run` with a persona, the model shortcuts, and every bad persona input as one `error:` line (no download: the
hub is offline here, and an empty Hugging Face cache is set for the tests that would fetch)."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from moshi_mlx.app import persona_args
from moshi_mlx.app.transcript import Transcript
from moshi_mlx.app.ui import ChatView
from rich.console import Console

from moshi_mlx import catalog

FIXTURES = Path(__file__).parent / "fixtures" / "voice"
PERSONAPLEX = "nvidia/personaplex-7b-v1"


@pytest.fixture
def env(tmp_path):
    """An empty, offline Hugging Face cache and a private moshi-mlx cache folder."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "MOSHI_MLX_TOTAL_MEMORY_GB": "64"}


def moshi(*args, env, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "moshi_mlx", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd, timeout=timeout)


def one_line_error(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: "), err
    return err.removeprefix("error: ")


def speech(path, seconds=1.28, rate=24000):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 4 * t)), rate)
    return path


@pytest.fixture
def wav(tmp_path):
    return speech(tmp_path / "in.wav")


def run(wav, tmp_path, *args, env):
    return moshi("run", wav, "--out", tmp_path / "out.wav", *args, env=env, cwd=tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--persona", "You are a pirate."], "--persona needs a PersonaPlex model, trained to take a role and a voice "
     "prompt, and Moshi is not one: add --model personaplex (NVIDIA's PersonaPlex) or --model personaplex-rl"),
    (["--voice", "NATF2"], "--voice NATF2 needs a PersonaPlex model"),
    (["--voice", "moshica"], "unknown voice 'moshica': Moshi speaks as moshiko or moshika; PersonaPlex's voices"),
    (["--model", "moshi", "--hf-repo", "kyutai/moshika-mlx-q8"], "--model moshi picks Kyutai's repo by --voice"),
    (["--model", "moshika-rl", "--persona", "x"], "--persona needs a PersonaPlex model, trained to take a role and a "
     "voice prompt, and kyutai/moshika-rl-seamless is not one"),
    (["--persona", "  "], "--persona is empty: give the role"),
    (["--persona", "x", "--persona-file", "role.txt"], "give the role once: --persona TEXT or --persona-file FILE"),
    (["--persona-file", "missing.txt"], "--persona-file not found: missing.txt"),
    (["--voice-prompt", "missing.wav"], "voice prompt audio file not found: missing.wav"),
    (["--voice-prompt", "missing.pt"], "voice prompt not found: missing.pt"),
    (["--voice", "NATF1", "--voice-prompt", "v.wav"], "give one voice: --voice NATF1 or --voice-prompt v.wav"),
    (["--model", "personaplex", "-q", "4"], f"{PERSONAPLEX} publishes bf16 weights only: leave out -q 4, or make a q4 "
     f"with `moshi-mlx quantize {PERSONAPLEX} --bits 4 -o personaplex-q4`"),
    (["--model", "personaplex", "--voice", "moshika"], f"moshika is Moshi's own voice; {PERSONAPLEX} speaks with "
     "PersonaPlex's voices: --voice NATF2"),
    (["--model", "moshika-rl", "--voice", "moshiko"], "kyutai/moshika-rl-seamless speaks with Moshika's voice only"),
    (["--model", "personaplex", "--hf-repo", "kyutai/moshiko-mlx-q4"], f"--model personaplex is {PERSONAPLEX}: leave "
     "out --hf-repo kyutai/moshiko-mlx-q4"),
    (["--model", "personaplex"], f"voices.tgz of {PERSONAPLEX} is not in the Hugging Face cache and cannot be "
     "downloaded now (offline: HF_HUB_OFFLINE is set); run `moshi-mlx download --model personaplex` while online"),
    (["--model", "personaplex-rl", "--voice-prompt", "voice.wav"],
     "model.safetensors of kyutai/personaplex-rl-seamless is not in the Hugging Face cache"),
])
def test_bad_persona_input_is_one_line(tmp_path, wav, env, args, message):
    speech(tmp_path / "voice.wav")
    err = one_line_error(run(wav, tmp_path, *args, env=env))
    assert err.startswith(message), err
    assert not (tmp_path / "out.wav").exists()


def test_voice_name_is_checked_by_the_parser(tmp_path, wav, env):
    result = run(wav, tmp_path, "--voice", "NAT F1", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: argument --voice: 'NAT F1' is not a voice name")


def test_persona_file_of_the_wrong_kind(tmp_path, wav, env):
    (tmp_path / "role.txt").write_bytes(b"\xff\xfe bad")
    err = one_line_error(run(wav, tmp_path, "--model", "personaplex", "--persona-file", tmp_path / "role.txt", env=env))
    assert err.endswith("role.txt is not UTF-8 text")


def test_not_enough_memory_points_at_quantize(tmp_path, wav, env):
    err = one_line_error(run(wav, tmp_path, "--model", "personaplex", env={**env, "MOSHI_MLX_TOTAL_MEMORY_GB": "16"}))
    assert err.startswith(f"not enough memory for {PERSONAPLEX} in bf16: it needs about 19.1 GiB and this machine "
                          "has 16.0 GiB; make a q4 with `moshi-mlx quantize")


def cached_voices(env, names):
    """A voices.tgz in the (offline) Hugging Face cache, as `hf_hub_download` leaves it."""
    repo = Path(env["HF_HOME"]) / "hub" / "models--nvidia--personaplex-7b-v1"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    with tarfile.open(snapshot / "voices.tgz", "w:gz") as tar:
        for name in names:
            data = (FIXTURES / "voice_tiny.pt").read_bytes()
            info = tarfile.TarInfo(f"voices/{name}.pt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_unknown_voice_lists_the_repos_voices(tmp_path, wav, env):
    cached_voices(env, ["NATF0", "NATF2", "VARM1"])
    err = one_line_error(run(wav, tmp_path, "--model", "personaplex", "--voice", "NATF9", env=env))
    assert err == (f"unknown voice 'NATF9': {PERSONAPLEX} has NATF0, NATF2, VARM1 (or --voice-prompt FILE for a voice "
                   "from audio)")
    # A voice the repo has is read (any case) before the weights are looked for.
    err = one_line_error(run(wav, tmp_path, "--model", "personaplex", "--voice", "natf2", env=env))
    assert err.startswith(f"model.safetensors of {PERSONAPLEX} is not in the Hugging Face cache")


def test_download_by_name(env):
    err = one_line_error(moshi("download", "--model", "personaplex", "-q", "8", env=env))
    assert err.startswith(f"{PERSONAPLEX} publishes bf16 weights only")
    err = one_line_error(moshi("download", "--model", "personaplex-rl", env=env))
    assert err == "cannot download kyutai/personaplex-rl-seamless: HF_HUB_OFFLINE is set; unset it and connect to " \
                  "the internet"


@pytest.mark.parametrize("voice", ["wav", "pt"])
def test_run_with_a_persona(tmp_path, wav, env, tiny_persona_model, voice):
    prompt = speech(tmp_path / "voice.wav", 0.6) if voice == "wav" else FIXTURES / "voice_tiny.pt"
    result = run(wav, tmp_path, *tiny_persona_model.cli_args(), "--persona", "You are a pirate.", "--voice-prompt",
                 prompt, "--seed", "0", "--transcript", tmp_path / "words.txt", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert f'Persona: "You are a pirate." · voice {prompt.name}' in lines
    read = next(line for line in lines if line.startswith("Persona read: "))
    steps = int(read.split()[2])
    assert steps == (8 if voice == "wav" else 6) + 12 + len(persona_tokens(tiny_persona_model, "You are a pirate."))
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 24000 and len(out) == 30720  # aligned with the input, the prompt not in it


def persona_tokens(tiny_model, text):
    from moshi_mlx.persona.prompt import persona_tokens as tokens
    from moshi_mlx.stream.pipeline import load_text_tokenizer

    return tokens(load_text_tokenizer(tiny_model.tokenizer), text)


def test_persona_longer_than_the_context(tmp_path, wav, env, tiny_persona_model):
    role = " ".join(["You are a very patient teacher of French grammar."] * 20)
    err = one_line_error(run(wav, tmp_path, *tiny_persona_model.cli_args(), "--persona", role, "--voice-prompt",
                             FIXTURES / "voice_tiny.pt", env=env))
    assert "more than the model's context of 100: shorten the role or the voice" in err


@pytest.mark.parametrize(("pt", "message"), [
    ("tensors.pt", "tensors.pt is not a PersonaPlex voice"),
])
def test_pt_voice_that_does_not_fit(tmp_path, wav, env, tiny_persona_model, pt, message):
    err = one_line_error(run(wav, tmp_path, *tiny_persona_model.cli_args(), "--voice-prompt", FIXTURES / pt, env=env))
    assert message in err


def test_a_local_personaplex_without_a_voice_uses_nvidias(tmp_path, wav, env, tiny_persona_model):
    err = one_line_error(run(wav, tmp_path, *tiny_persona_model.cli_args(), env=env))
    assert err.startswith(f"voices.tgz of {PERSONAPLEX} is not in the Hugging Face cache")


def test_licence_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    known = catalog.by_name("moshika-rl")
    persona_args.note_licence(known)
    persona_args.note_licence(known)
    err = capsys.readouterr().err.splitlines()
    assert err == ["Licence: kyutai/moshika-rl-seamless's weights are under the CC BY-NC 4.0 (non-commercial use "
                   "only; https://huggingface.co/kyutai/moshika-rl-seamless)"]
    persona_args.note_licence(catalog.by_name("personaplex"))
    assert "NVIDIA Open Model License (commercial use allowed" in capsys.readouterr().err


def test_header_shows_the_persona():
    view = ChatView("personaplex bf16", Transcript(), '"You are a patient French teacher." · voice NATF2')
    console = Console(width=70, height=12, record=True, color_system=None)
    console.print(view.render(console))
    first = console.export_text().splitlines()[0]
    assert first == 'persona: "You are a patient French teacher." · voice NATF2'


def test_gated_repo_says_how_to_get_in(monkeypatch):
    """The later checkpoints are gated: a refused download says to accept the licence and log in."""
    from types import SimpleNamespace

    from huggingface_hub.errors import GatedRepoError

    from moshi_mlx import MoshiError, hub

    def refuse(*args, **kwargs):
        response = SimpleNamespace(headers={}, status_code=403, url="https://huggingface.co", request=None)
        raise GatedRepoError("Access to model nvidia/personaplex-7b-v1 is restricted.", response=response)

    monkeypatch.setattr(hub, "hf_hub_download", refuse)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    with pytest.raises(MoshiError) as caught:
        hub.fetch(PERSONAPLEX, "voices.tgz", cached_first=False)
    assert str(caught.value) == (f"{PERSONAPLEX} is gated: accept its licence on https://huggingface.co/{PERSONAPLEX} "
                                 "while logged in, then log in here (`hf auth login`, or set HF_TOKEN)")
