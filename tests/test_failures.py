"""A failure in the middle of a conversation: one `error:` line naming a log file with the traceback, the files
kept, exit status 1; a failing codec is renewed instead, with one line, and the conversation goes on."""

from __future__ import annotations

import moshi_mlx.app.chat
import pytest
import soundfile
from moshi_mlx.app.cli import main

from moshi_mlx.codec import rustymimi_backend
from moshi_mlx.model.generate import LmGen

RUST_ERROR = ("narrow invalid args start + len > dim_len: [8192, 32], dim: 0, start: 8192, len:2\n"
              "   0: candle_core::error::Error::bt\n             at /root/.cargo/registry/src/error.rs:254:25")
FRAME = 1920


@pytest.fixture
def environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSHI_MLX_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MOSHI_MLX_TOTAL_MEMORY_GB", "64")
    return tmp_path


def fail_lm_at_call(monkeypatch, call: int) -> None:
    """The LM's step number `call` (from 1, warm-up included) fails as it is submitted."""
    submit, calls = LmGen.submit, [0]

    def failing(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise ValueError(RUST_ERROR)
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(LmGen, "submit", failing)


def run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any("candle_core" in line or "Traceback" in line for line in err), err
    return err[-1]


def check_log(line: str, environment) -> None:
    log = line.rsplit("the details are in ", 1)[1]
    assert log.startswith(str(environment / "logs")), line
    text = open(log).read()
    assert "Traceback" in text and "candle_core::error" in text  # the whole message and where it came from


def test_run_failure_is_one_line_with_a_log_and_keeps_the_files(tiny_model, environment, monkeypatch, capsys):
    source, out, words = environment / "in.wav", environment / "out.wav", environment / "words.txt"
    soundfile.write(str(source), [0.1, -0.1] * (12 * FRAME // 2), 24000)
    fail_lm_at_call(monkeypatch, 7)
    status = run_cli(["run", str(source), "--out", str(out), "--transcript", str(words), *tiny_model.cli_args()])
    assert status == 1
    line = error_line(capsys)
    assert line.startswith("error: the run stopped at frame ") and f"{out} and {words} hold the first" in line
    assert "narrow invalid args start + len > dim_len: [8192, 32], dim: 0, start: 8192, len:2 (ValueError)" in line
    check_log(line, environment)
    audio, rate = soundfile.read(str(out))
    assert rate == 24000 and len(audio) >= 5 * FRAME  # what was done before the failure stays
    assert words.read_text().endswith("\n")


def test_a_failing_codec_is_renewed_and_the_run_goes_on(tiny_model, environment, monkeypatch, capsys):
    source, out = environment / "in.wav", environment / "out.wav"
    soundfile.write(str(source), [0.1, -0.1] * (20 * FRAME // 2), 24000)
    load, made = rustymimi_backend.RustyMimi._load, []

    class FailsOnce:
        def __init__(self, tokenizer):
            self.tokenizer, self.calls = tokenizer, 0

        def encode_step(self, pcm):
            self.calls += 1
            if self.calls == 8 and self is made[0]:  # the first encoder, at its 8th frame (two of warm-up)
                raise ValueError(RUST_ERROR)
            return self.tokenizer.encode_step(pcm)

        def decode_step(self, codes):
            return self.tokenizer.decode_step(codes)

    def loading(self):
        wrapped = FailsOnce(load(self))
        made.append(wrapped)
        return wrapped

    monkeypatch.setattr(rustymimi_backend.RustyMimi, "_load", loading)
    monkeypatch.setattr(rustymimi_backend.RustyMimi, "reset", lambda self: None)  # keep the failing encoder
    status = run_cli(["run", str(source), "--out", str(out), "--quiet", *tiny_model.cli_args()])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 0, err
    notes = [line for line in err if line.startswith("note:")]
    assert notes == ["note: Mimi's encoder failed (narrow invalid args start + len > dim_len: [8192, 32], dim: 0, "
                     "start: 8192, len:2); renewed it and carried on"], err
    audio, _ = soundfile.read(str(out))
    assert len(audio) == 20 * FRAME


@pytest.mark.audio
def test_chat_failure_is_one_line_with_a_log_and_keeps_the_files(virtual_audio, tiny_model, environment,
                                                                 monkeypatch, capsys):
    monkeypatch.setattr(moshi_mlx.app.chat, "interrupt_on_termination", lambda: None)
    words, record = environment / "words.txt", environment / "talk.wav"
    fail_lm_at_call(monkeypatch, 2 + 10)  # two warm-up steps, then ten frames of conversation
    status = run_cli(["chat", "--plain", "--transcript", str(words), "--record", str(record),
                      *tiny_model.cli_args()])
    assert status == 1
    line = error_line(capsys)
    assert line.startswith("error: the conversation stopped after 00:0"), line
    assert "(ValueError); the details are in " in line
    check_log(line, environment)
    audio, rate = soundfile.read(str(record))
    assert rate == 24000 and audio.shape[1] == 2 and len(audio) >= 5 * FRAME
    assert words.exists()
