"""The real `moshi-mlx chat` on the virtual sound card with tiny random models: in a terminal (tmux) and piped.

This machine is slower than real time with the full-size Mimi, so the lag policy acts throughout; the screen
must show it and keep going.
"""

import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from helpers import RunningApp, wait_for

from moshi_mlx.devtools.virtual_audio import speech_wav

pytestmark = pytest.mark.audio

SPEECH = "Hello Moshi, how are you today? Tell me something about the weather."
STATUS = re.compile(
    r"\| encode \d+ · lm \d+ · decode \d+ ms \| RTF \d+\.\d\d \| latency \d+ ms \| backlog \d+ \| drops \d+ \| "
    r"underruns \d+ \| \d\d:\d\d"
)
TRANSCRIPT_LINE = re.compile(r"\[(\d\d:\d\d)\.\d\] (\S.*)")


def chat_command(tiny_model, tmp_path):
    transcript, record = tmp_path / "transcript.txt", tmp_path / "conversation.wav"
    # A hot text temperature: the random model then says more than one repeated piece.
    command = [sys.executable, "-m", "moshi_mlx", "chat", *tiny_model.cli_args(), "--seed", "0",
               "--temp-text", "2", "--transcript", transcript, "--record", record]
    return [str(c) for c in command], transcript, record


def check_files(transcript, record):
    lines = transcript.read_text().splitlines()
    assert lines and all(TRANSCRIPT_LINE.fullmatch(line) for line in lines), lines
    audio, rate = sf.read(record, dtype="float32")
    assert rate == 24000 and audio.ndim == 2 and audio.shape[1] == 2 and len(audio) % 1920 == 0
    user, moshi = audio[:, 0], audio[:, 1]
    assert np.sqrt(np.mean(user**2)) > 0.01  # the speech reached the microphone and the file
    assert np.abs(moshi).max() > 0.01  # the random Mimi decoder makes sound
    return lines


def test_live_screen_in_a_terminal(tmp_path, tiny_model, virtual_audio):
    if shutil.which("tmux") is None:
        pytest.fail("this test drives the app in tmux: install it (`apt-get install tmux`; .ci/run does)")
    speech = speech_wav(tmp_path / "speech.wav", SPEECH)
    command, transcript, record = chat_command(tiny_model, tmp_path)
    exit_file = tmp_path / "exit_status"
    env = " ".join(f"{key}={shlex.quote(virtual_audio.env[key])}" for key in ("PULSE_SERVER", "XDG_RUNTIME_DIR"))
    # COLUMNS and LINES (set under pytest) would override the terminal's real size.
    shell = f"env -u COLUMNS -u LINES {env} {shlex.join(command)}; echo $? > {exit_file}; sleep 600"
    socket = tmp_path / "tmux.sock"  # a private tmux server

    def tmux(*args):
        return subprocess.run(["tmux", "-S", str(socket), *args], capture_output=True, text=True, timeout=20)

    def screen():
        return tmux("capture-pane", "-p", "-t", "chat").stdout

    def screen_matching(pattern):
        text = screen()
        return text if re.search(pattern, text, re.M) else None

    tmux("new-session", "-d", "-s", "chat", "-x", "100", "-y", "24", shell)
    try:
        wait_for(lambda: "Ctrl-C to stop" in screen() and "RTF" in screen(), 180, "the live screen")
        player = virtual_audio.play(speech)
        heard = wait_for(lambda: screen_matching(r"you █+"), 60, "the user's level")
        player.wait(60)
        words = wait_for(lambda: screen_matching(r"^\d\d:\d\d \S"), 60, "Moshi's words")
        tmux("send-keys", "-t", "chat", "C-c")
        wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 60, "the app to exit")
        final = screen()
    finally:
        tmux("kill-server")
    print(f"--- while the user spoke ---\n{heard}\n--- after Ctrl-C ---\n{final}")

    assert exit_file.read_text().strip() == "0", final
    assert STATUS.search(" ".join(words.split())), words
    assert "model.safetensors bf16 |" in words
    assert "Traceback" not in final
    assert re.search(r"Stopped after \d\d:\d\d: \d+ frames", final)
    lines = check_files(transcript, record)
    # The words on the screen are the transcript's: same start time, same first piece.
    clock, text = re.search(r"^(\d\d:\d\d) (\S+)", words, re.M).groups()
    starts = [TRANSCRIPT_LINE.fullmatch(line).groups() for line in lines]
    assert any(start == clock and line_text.startswith(text) for start, line_text in starts), (clock, text, lines)


def test_plain_lines_when_stdout_is_not_a_terminal(tmp_path, tiny_model, virtual_audio):
    speech = speech_wav(tmp_path / "speech.wav", SPEECH)
    command, transcript, record = chat_command(tiny_model, tmp_path)
    app = RunningApp(command)
    try:
        app.wait_for_err("Ctrl-C to stop", 180)
        virtual_audio.play(speech).wait(60)
        returncode = app.stop()
    finally:
        app.close()
    out = app.out
    assert returncode == 0, app.err
    assert "\x1b" not in out and "Traceback" not in app.err
    lines = out.splitlines()
    assert lines[-1].startswith("[") and "] status: model.safetensors bf16 | encode " in lines[-1]
    assert STATUS.search(lines[-1])
    # Moshi's lines on stdout are exactly those of the transcript file.
    assert [line for line in lines if TRANSCRIPT_LINE.fullmatch(line)] == check_files(transcript, record)


def test_devices_lists_the_virtual_sound_card(virtual_audio):
    result = subprocess.run([sys.executable, "-m", "moshi_mlx", "devices"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # PortAudio reaches PulseAudio through ALSA's `pulse` and `default` devices; `default` is both defaults here.
    assert any(re.fullmatch(r"<> +\d+  default  \(\d+ in, \d+ out, ALSA, \d+ Hz\)", line) for line in lines), lines
    assert any(" pulse  (" in line for line in lines), lines
