"""`moshi-mlx transcribe FILE` end to end on the tiny STT model (random words: structure and timing are tested),
and on a stand-in generator where known words are needed; every bad input refused in one line, -o untouched."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from moshi_mlx.app import cli, transcribe

from moshi_mlx import Pipeline
from moshi_mlx.devtools.stt_stand_ins import CheapCodec, ScriptedSttGen
from moshi_mlx.devtools.tiny_stt import TINY_STT_DELAY_S, TINY_STT_PREFIX_S, write_tiny_stt
from moshi_mlx.model.config import LmConfig
from moshi_mlx.stream.audio_file import open_audio
from moshi_mlx.stream.pipeline import load_text_tokenizer
from moshi_mlx.stream.stt_file import transcribe_blocks
from moshi_mlx.stream.words import Timing, WordAssembler

TIMED = re.compile(r"\s*(\d+\.\d\d)\s+(\d+\.\d\d)  (\S+)")


@pytest.fixture(scope="module")
def stt(tmp_path_factory, mimi_weights):
    return write_tiny_stt(tmp_path_factory.mktemp("stt"), mimi_weights)


def write_input(path: Path, seconds: float = 3.0, rate: int = 24000, channels: int = 1) -> Path:
    """Noise under a wandering tone: the random model hears something different at every frame."""
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * np.sin(2 * np.pi * 0.7 * t)) * t)
    audio = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)], axis=1)
    soundfile.write(str(path), audio.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    return write_input(tmp_path_factory.mktemp("in") / "in.wav", rate=44100, channels=2)


def run_cli(capsys, argv, code=0):
    try:
        cli.main([str(a) for a in argv])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert status == code, (status, err)
    assert "Traceback" not in err
    return out, err


def expected_text(stt, source: Path) -> tuple[str, int]:
    """The words the library's sequential path gives (stt_file.transcribe_blocks over the same blocks)."""
    pipeline = stt.load_pipeline(temp_text=0)
    cfg = pipeline.gen.cfg
    words = WordAssembler(Timing(TINY_STT_DELAY_S, TINY_STT_PREFIX_S))
    text = []
    try:
        for event in transcribe_blocks(pipeline, open_audio(source).mono_24k()):
            text.append(words.add(event.index, event.text_token, event.text).text)
    finally:
        pipeline.close()
    text.append(words.finish().text)
    assert cfg.dep_q == 0
    return "".join(text).strip(), words.words


def test_words_of_a_file_as_the_library_gives_them(stt, wav, capsys):
    out, err = run_cli(capsys, ["transcribe", wav, *stt.cli_args()])
    text, count = expected_text(stt, wav)
    assert count > 3, "the tiny model says too little here to test anything"
    assert out == text + "\n"
    assert re.search(rf"transcribed {re.escape(str(wav))}: 3\.0 s in [\d.]+ s \([\d.]+x real time\), {count} words",
                     err), err


def test_timestamps_are_seconds_of_the_input(stt, wav, capsys):
    out, _ = run_cli(capsys, ["transcribe", wav, "--timestamps", *stt.cli_args()])
    rows = [TIMED.fullmatch(line) for line in out.splitlines()]
    assert rows and all(rows), out
    starts, ends = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert starts == sorted(starts) and all(0 <= s <= e <= 3.0 for s, e in zip(starts, ends, strict=True))
    assert all(e <= s2 + 1e-9 for e, s2 in zip(ends, starts[1:], strict=False))  # words do not overlap
    text, _ = expected_text(stt, wav)
    assert "".join(r[3] for r in rows) == "".join(text.split())  # (a piece glued on after a 0 is a word of its own)


def test_every_format_to_a_file(stt, wav, tmp_path, capsys):
    timed, _ = run_cli(capsys, ["transcribe", wav, "--timestamps", *stt.cli_args()])
    words = [TIMED.fullmatch(line).groups() for line in timed.splitlines()]
    outputs = {}
    for fmt in ("text", "srt", "vtt", "json"):
        target = tmp_path / f"out.{fmt}"
        out, err = run_cli(capsys, ["transcribe", wav, "-o", target, "--format", fmt, *stt.cli_args()])
        assert f"wrote {target}" in err
        outputs[fmt] = target.read_text()
        assert out.strip() == outputs["text"].strip()  # the terminal shows the words as text
    data = json.loads(outputs["json"])
    assert data["complete"] is True and data["duration_s"] == 3.0 and data["audio_delay_s"] == TINY_STT_DELAY_S
    assert [(f"{w['start']:.2f}", f"{w['end']:.2f}", w["text"]) for w in data["words"]] == words
    assert data["text"] == outputs["text"].strip()
    assert outputs["vtt"].startswith("WEBVTT\n\n")
    srt_cues = outputs["srt"].strip().split("\n\n")
    assert [c.split("\n")[0] for c in srt_cues] == [str(i) for i in range(1, len(srt_cues) + 1)]
    assert " ".join(" ".join(c.split("\n")[2:]) for c in srt_cues).split() == [w[2] for w in words]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{f}" for f in ("json", "srt", "text", "vtt")]


def test_format_to_stdout_without_o(stt, wav, capsys):
    out, _ = run_cli(capsys, ["transcribe", wav, "--format", "json", *stt.cli_args()])
    assert json.loads(out)["complete"] is True


# --- known words: a stand-in generator saying scripted tokens over the tiny model's config and tokenizer ---


@pytest.fixture
def scripted(stt, monkeypatch):
    """Make `transcribe` run `ScriptedSttGen` with the tokens (and end-of-turn probabilities) given to the fixture."""
    tokenizer = load_text_tokenizer(stt.tokenizer)
    config = LmConfig.from_json(stt.config)

    def use(tokens, turn_end=None):
        monkeypatch.setattr(transcribe, "load_stt", lambda args, files: Pipeline(
            ScriptedSttGen(config, tokens, turn_end), CheapCodec(32), tokenizer))

    return tokenizer, use


def piece_ids(tokenizer, text):
    return tokenizer.encode(text)


def test_known_words_and_their_times(stt, scripted, tmp_path, capsys):
    tokenizer, use = scripted
    hello, there = piece_ids(tokenizer, "hello"), piece_ids(tokenizer, "there")
    # frames 0-19 padding, 20 end of padding, the pieces of "hello", padding, 30 end of padding, "there", 40 end.
    tokens = [3] * 20 + [0] + hello + [3] * (9 - len(hello)) + [0] + there + [3] * (9 - len(there)) + [0]
    use(tokens)
    source = write_input(tmp_path / "in.wav", seconds=4.0)
    out, _ = run_cli(capsys, ["transcribe", source, "--timestamps", *stt.cli_args()])
    at = lambda frame: round(frame * 0.08 - TINY_STT_DELAY_S - TINY_STT_PREFIX_S, 2)  # noqa: E731
    assert [line.split() for line in out.splitlines()] == [
        [f"{at(21):.2f}", f"{at(30):.2f}", "hello"], [f"{at(31):.2f}", f"{at(40):.2f}", "there"]]
    out, _ = run_cli(capsys, ["transcribe", source, *stt.cli_args()])
    assert out == "hello there\n"


def test_end_of_turn_marks(stt, scripted, tmp_path, capsys):
    tokenizer, use = scripted
    one, two = piece_ids(tokenizer, "how are you"), piece_ids(tokenizer, "fine")
    tokens = [3] * 10 + [0] + one + [0] + [3] * 20 + [0] + two + [0]
    turn_end = [0.9] * 10 + [0.1] * 12 + [0.9] * 20 + [0.1] * 5
    use(tokens, turn_end)
    source = write_input(tmp_path / "in.wav", seconds=4.0)
    out, _ = run_cli(capsys, ["transcribe", source, "--vad", *stt.cli_args()])
    assert out == "how are you [end of turn]\nfine\n"
    srt = tmp_path / "out.srt"
    run_cli(capsys, ["transcribe", source, "--vad", "-o", srt, "--format", "srt", *stt.cli_args()])
    assert [c.split("\n")[2] for c in srt.read_text().strip().split("\n\n")] == ["how are you", "fine"]


# --- bad input: one line, exit 1, -o untouched ---


def fingerprint(path: Path) -> tuple:
    return path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes()


def refused(capsys, argv) -> str:
    _, err = run_cli(capsys, argv, code=1)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("case, message", [
    ("unreadable", "cannot read audio file"),
    ("missing input", "audio file not found"),
    ("moshi checkpoint", "is a conversation model (Moshi, dep_q 8), not speech-to-text"),
    ("missing weights", "not found"),
    ("no such folder", "its folder does not exist"),
    ("no end-of-turn head", "--vad needs the model's end-of-turn head"),
    ("nan samples", "is damaged: 1 samples are NaN or infinite from 1.00 s"),
])
def test_bad_input_is_one_line_and_leaves_o_as_it_was(case, message, stt, tiny_model, wav, tmp_path, capsys):
    out = tmp_path / "out.srt"
    out.write_text("earlier subtitles\n")
    kept = fingerprint(out)
    source, model, extra = wav, stt.cli_args(), []
    if case == "unreadable":
        source = tmp_path / "junk.wav"
        source.write_bytes(b"RIFF junk")
    elif case == "missing input":
        source = tmp_path / "none.wav"
    elif case == "moshi checkpoint":
        model = tiny_model.cli_args()
    elif case == "missing weights":
        model = [*stt.cli_args(), "--moshi-weights", tmp_path / "none.safetensors"]
    elif case == "no such folder":
        out = tmp_path / "none" / "out.srt"
    elif case == "no end-of-turn head":
        config = tmp_path / "config.json"
        config.write_text(json.dumps({**json.loads(stt.config.read_text()), "extra_heads_num_heads": 0}))
        model, extra = [*stt.cli_args(), "--config", config], ["--vad"]
    elif case == "nan samples":
        audio = np.zeros(48000, np.float32)
        audio[24000] = np.nan
        source = tmp_path / "nan.wav"
        soundfile.write(str(source), audio, 24000, subtype="FLOAT")
    err = refused(capsys, ["transcribe", source, "-o", out, "--format", "srt", *model, *extra])
    assert message in err, err
    if out.exists():
        assert fingerprint(out) == kept
    assert not list(tmp_path.glob(".*.part")), "a temporary file was left behind"


def test_offline_without_the_model_in_the_cache(wav, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from moshi_mlx import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "_reachable", None)
    err = refused(capsys, ["transcribe", wav, "--model", "stt-1b"])
    assert "is not in the Hugging Face cache" in err and "moshi-mlx download" in err, err
    err = refused(capsys, ["transcribe", wav, "--model", "stt-2.6b", "--vad"])
    assert "stt-2.6b has no voice-activity heads" in err, err
    err = refused(capsys, ["transcribe", wav, "--model", "stt-1b", "-q", "4"])
    assert "Kyutai publishes stt-1b in bf16 only" in err, err
    monkeypatch.setenv("MOSHI_MLX_TOTAL_MEMORY_GB", "8")
    err = refused(capsys, ["transcribe", wav, "--model", "stt-2.6b"])
    assert err == "error: not enough memory for stt-2.6b: it needs about 8.4 GiB and this machine has 8.0 GiB; use " \
                  "--model stt-1b\n", err
    monkeypatch.delenv("MOSHI_MLX_TOTAL_MEMORY_GB")
    err = refused(capsys, ["download", "--model", "stt-1b", "--vad"])
    assert err.startswith("error: cannot download kyutai/stt-1b-en_fr-candle: HF_HUB_OFFLINE is set"), err


def test_mistyped_command_lines(capsys, wav):
    _, err = run_cli(capsys, ["transcribe", wav, "--quiet"], code=2)
    assert err.startswith("error: --quiet without -o or --transcript would write nothing")
    _, err = run_cli(capsys, ["transcribe", wav, "--format", "doc"], code=2)
    assert "invalid choice: 'doc'" in err


def test_transcript_lines_of_a_file(stt, scripted, tmp_path, capsys):
    tokenizer, use = scripted
    tokens = [3] * 20
    for word in ["hello", "there.", "how", "are", "you?"]:
        tokens += [0] + tokenizer.encode(word) + [3, 3]
    use(tokens)
    source, lines = write_input(tmp_path / "in.wav", seconds=6.0), tmp_path / "t.txt"
    lines.write_text("earlier\n")
    run_cli(capsys, ["transcribe", source, "--transcript", lines, "--quiet", *stt.cli_args()])
    first, second = lines.read_text().splitlines()
    assert first == "[00:01.0] hello there." and re.fullmatch(r"\[00:0\d\.\d\] how are you\?", second), second


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_what_was_transcribed(stt, tmp_path, signum):
    """Ctrl-C (or kill) mid-file: exit 130, one line saying how much -o holds, and -o a complete document."""
    source, out = write_input(tmp_path / "long.wav", seconds=60.0), tmp_path / "out.json"
    out.write_text("earlier\n")
    command = [sys.executable, "-m", "moshi_mlx", "transcribe", str(source), "-o", str(out), "--format", "json",
               "--quiet", *stt.cli_args()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any('"start"' in p.read_text() for p in tmp_path.glob(".out.json.*.part")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    held = re.search(rf"interrupted: {re.escape(str(out))} holds the first ([\d.]+) s of 60\.0 s", err)
    assert held and 0 < float(held[1]) < 60, err
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["words"]
    assert data["words"][-1]["end"] <= float(held[1]) + 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "out.json"]


@pytest.mark.parametrize("quant", ["bf16", "4"])
def test_bench_says_whether_the_machine_keeps_up(quant, capsys, monkeypatch):
    """`bench --model stt-1b` runs the real shapes; here narrowed so that it is quick (same code path)."""
    from moshi_mlx.app import bench_stt

    monkeypatch.setitem(bench_stt.STT_SHAPES, "stt-1b", {**bench_stt.STT_SHAPES["stt-1b"], "num_heads": 2,
                                                         "num_layers": 2, "text_card": 64})
    monkeypatch.setattr(bench_stt, "COMMON", {**bench_stt.COMMON, "dim": 64})
    out, _ = run_cli(capsys, ["bench", "--model", "stt-1b", "--frames", "3", "-q", quant])
    name = "stt-1b bf16" if quant == "bf16" else "stt-1b q4"
    assert out.startswith(f"moshi-mlx bench: {name}, random weights built in memory, 3 frames per pass\n")
    assert re.search(r"step: [\d,]+ operations and 1 host synchronisation\(s\) per frame", out), out
    assert re.search(r"frame loop \(as `moshi-mlx transcribe` runs it\): 3 frames in [\d.]+ s, real-time factor", out)
    assert re.search(rf"verdict: {name} (keeps up with live speech on this machine with \d+ % headroom: words come "
                     r"about 0\.66 s|does not keep up with live speech on this machine)", out), out


def test_same_words_as_kyutais_run_inference(mimi_weights, tmp_path, capsys):
    """`moshi-mlx transcribe` over a WAV prints the words Kyutai's PyTorch `run_inference` printed over it (the same
    random weights, greedy, float32; fixture by tests/fixtures/make_stt_fixtures.py)."""
    import mlx.core as mx
    from test_stt_parity import FIXTURES, config, file_run, pytorch_weights

    from moshi_mlx.devtools.tiny_tokenizer import write_tiny_tokenizer

    run, cfg = file_run(), config()
    weights = tmp_path / "model.safetensors"
    mx.save_safetensors(str(weights), {n: mx.array(w) for n, w in pytorch_weights().items()})
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer.model", vocab_size=cfg.text_card)
    source = tmp_path / "in.wav"
    soundfile.write(str(source), run["input_i16"], 24000, subtype="PCM_16")
    out, _ = run_cli(capsys, ["transcribe", source, "--moshi-weights", weights, "--config", FIXTURES / "stt_tiny.json",
                              "--mimi-weights", mimi_weights, "--tokenizer", tokenizer, "--dtype", "float32",
                              "--mimi", "rust"])
    sp = load_text_tokenizer(tokenizer)
    # What run_inference prints: every piece but 0 and 3 (its first step is the repeated first frame, not printed).
    printed = "".join(sp.id_to_piece(int(t)).replace("\u2581", " ") for t in run["steps"][1:] if t not in (0, 3))
    assert not any(sp.is_control(int(t)) for t in run["steps"][1:])
    assert len(printed.split()) >= 3 and out.split() == printed.split()
