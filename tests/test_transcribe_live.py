"""`moshi-mlx transcribe` with no file: live from the microphone.

On the virtual sound card with the tiny STT model (words appear while the audio plays; Ctrl-C or kill keeps the
transcript), and in-process on simulated devices with a stand-in generator saying known words, where the words
printed, the ends of turn and the files are checked exactly against what the model said in the frames it ran.
"""

import _thread
import io
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import RunningApp, wait_for
from moshi_mlx.app import cli, transcribe, transcribe_live
from moshi_mlx.app.transcribe_formats import TextWriter
from moshi_mlx.app.transcribe_live import LiveView, ScreenText
from rich.console import Console

from moshi_mlx import Pipeline
from moshi_mlx.devtools.stand_ins import SimulatedDevices
from moshi_mlx.devtools.stt_stand_ins import CheapCodec, ScriptedSttGen
from moshi_mlx.devtools.tiny_stt import TINY_STT_DELAY_S, write_tiny_stt
from moshi_mlx.devtools.virtual_audio import speech_wav
from moshi_mlx.model.config import LmConfig
from moshi_mlx.stream.pipeline import FrameEvent, load_text_tokenizer
from moshi_mlx.stream.words import Timing, TurnDetector, WordAssembler

TRANSCRIPT_LINE = re.compile(r"\[(\d\d:\d\d)\.\d\] (\S.*)")


@pytest.fixture(scope="module")
def stt(tmp_path_factory, mimi_weights):
    return write_tiny_stt(tmp_path_factory.mktemp("stt"), mimi_weights)


@pytest.mark.audio
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_live_on_the_virtual_microphone(stt, virtual_audio, tmp_path, signum):
    speech = speech_wav(tmp_path / "speech.wav", "Hello there, this is a test of live transcription.")
    transcript, out = tmp_path / "t.txt", tmp_path / "out.vtt"
    command = [sys.executable, "-m", "moshi_mlx", "transcribe", "--plain", "--vad", "--transcript", str(transcript),
               "-o", str(out), "--format", "vtt", *map(str, stt.cli_args())]
    app = RunningApp(command)
    try:
        app.wait_for_err("Ctrl-C to stop", 180)
        played = time.monotonic()
        player = virtual_audio.play(speech)
        player.wait(60)
        finished = time.monotonic()
        time.sleep(1.0)
        returncode = app.stop(signum)
    finally:
        app.close()
    out_chunks = app.out_chunks
    err = app.err
    assert returncode == 0, err
    assert "Traceback" not in err and re.search(r"Stopped after \d\d:\d\d: \d+ frames, \d+ skipped", err), err
    printed = "".join(chunk for _, chunk in out_chunks)
    during = "".join(chunk for at, chunk in out_chunks if played <= at <= finished)
    assert during.strip(), f"no words while the audio played: {printed!r}"
    words = printed.replace("[end of turn]", "").split()
    vtt = out.read_text()
    assert vtt.startswith("WEBVTT\n\n")
    cue_words = " ".join(block.split("\n", 1)[1] for block in vtt.strip().split("\n\n")[1:]).split()
    # The same text (a marker may fall between two pieces of a word on the terminal, not in a cue).
    assert "".join(cue_words) == "".join(words) and len(cue_words) >= 3
    lines = transcript.read_text().splitlines()
    assert lines and all(TRANSCRIPT_LINE.fullmatch(line) for line in lines), lines
    assert f"Transcript: {transcript} ({len(lines)} lines)" in err


@pytest.mark.audio
def test_live_screen_in_a_terminal(stt, virtual_audio, tmp_path):
    """The rich screen in a real terminal (tmux): the words as they come, the voice line with the end-of-turn head,
    the status line; Ctrl-C ends it with the summary and the transcript kept."""
    if shutil.which("tmux") is None:
        pytest.fail("this test drives the app in tmux: install it (`apt-get install tmux`; .ci/run does)")
    speech = speech_wav(tmp_path / "speech.wav", "Hello there, this is a test of live transcription.")
    transcript, exit_file, socket = tmp_path / "t.txt", tmp_path / "exit_status", tmp_path / "tmux.sock"
    command = [sys.executable, "-m", "moshi_mlx", "transcribe", "--transcript", str(transcript),
               *map(str, stt.cli_args())]
    env = " ".join(f"{key}={shlex.quote(virtual_audio.env[key])}" for key in ("PULSE_SERVER", "XDG_RUNTIME_DIR"))
    shell = f"env -u COLUMNS -u LINES {env} {shlex.join(command)}; echo $? > {exit_file}; sleep 600"

    def tmux(*args):
        return subprocess.run(["tmux", "-S", str(socket), *args], capture_output=True, text=True, timeout=20)

    def screen():
        return tmux("capture-pane", "-p", "-t", "stt").stdout

    tmux("new-session", "-d", "-s", "stt", "-x", "100", "-y", "20", shell)
    try:
        wait_for(lambda: "Ctrl-C to stop" in screen() and "RTF" in screen(), 180, "the live screen")
        virtual_audio.play(speech).wait(60)
        shown = wait_for(lambda: next((t for t in [screen()] if re.search(r"\| [1-9]\d* words \|", t)), None), 60,
                         "words on the screen")
        tmux("send-keys", "-t", "stt", "C-c")
        wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 60, "the app to exit")
        final = screen()
    finally:
        tmux("kill-server")
    print(f"--- while listening ---\n{shown}\n--- after Ctrl-C ---\n{final}")
    assert exit_file.read_text().strip() == "0", final
    assert re.search(r"you [█·]+ +-?\d+ dB   turn (going on|ended) \(end-of-turn \d\.\d\d\)   Ctrl-C to stop", shown)
    status = r"model\.safetensors \| encode \d+ · lm \d+ ms \| RTF \d+\.\d\d \| backlog \d+ \| drops \d+"
    assert re.search(status, " ".join(shown.split())), shown
    assert "Traceback" not in final and re.search(r"Stopped after \d\d:\d\d: \d+ frames", final)
    assert transcript.read_text().strip()


# --- in-process, on simulated devices, with a stand-in saying known words ---


def scripted_tokens(tokenizer, frames: int) -> tuple[list[int], list[float]]:
    """Words separated by end-of-padding tokens, and an end-of-turn probability that rises every 30 frames."""
    words = ["hello", "there", "how", "are", "you", "fine", "thank", "you"]
    tokens, w = [3] * 5, 0
    while len(tokens) < frames:
        tokens += [0] + tokenizer.encode(words[w % len(words)]) + [3, 3]
        w += 1
    turn_end = [0.9 if (t % 30) >= 22 else 0.1 for t in range(frames)]
    return tokens[:frames], turn_end


def expected_output(tokenizer, tokens, turn_end, frames: int) -> str:
    """What the terminal must show for the first `frames` frames: the words and the ends of turn, as decided."""
    timing = Timing(TINY_STT_DELAY_S)
    words, turns, shown = WordAssembler(timing), TurnDetector(timing), io.StringIO()
    writer = TextWriter(shown)
    heads = lambda p: np.array([[0.0] * 6, [0.0] * 6, [p, 1 - p, 0, 0, 0, 0]])  # noqa: E731
    for t in range(frames):
        token = tokens[t] if t < len(tokens) else 3
        piece = tokenizer.id_to_piece(token).replace("\u2581", " ") if token not in (0, 3) else None
        writer.text(words.add(t, token, piece).text)
        turns.update(t, heads(turn_end[t] if t < len(turn_end) else 0.0))
        for moment in turns.due(t):
            writer.end_of_turn(moment)
    writer.text(words.finish().text)
    for moment in turns.flush():
        writer.end_of_turn(moment)
    writer.close()
    return shown.getvalue()


def test_live_words_and_turns_are_exactly_what_the_model_said(stt, tmp_path, capsys, monkeypatch):
    tokenizer = load_text_tokenizer(stt.tokenizer)
    config = LmConfig.from_json(stt.config)
    tokens, turn_end = scripted_tokens(tokenizer, 400)
    noise = np.random.default_rng(0).normal(0, 0.1, 24000 * 10).astype(np.float32)
    monkeypatch.setattr(transcribe_live, "find_device", lambda spec, kind: None)
    monkeypatch.setattr(transcribe_live, "AudioDevices", lambda device, speaker: SimulatedDevices(noise, loop=True))
    monkeypatch.setattr(transcribe_live, "load_stt", lambda args, files: Pipeline(
        ScriptedSttGen(config, tokens, turn_end), CheapCodec(32), tokenizer))
    transcript, out = tmp_path / "t.txt", tmp_path / "out.json"
    threading.Timer(4.0, _thread.interrupt_main).start()  # Ctrl-C, about 50 frames in
    cli.main(["transcribe", "--vad", "--transcript", str(transcript), "-o", str(out), "--format", "json",
              *map(str, stt.cli_args())])
    printed, err = capsys.readouterr()
    frames = int(re.search(r"Stopped after \d\d:\d\d: (\d+) frames", err)[1])
    # The frames heard, then the model's delay in silence (Engine.tail_frames) so that the last words come out.
    assert frames >= 30 + TINY_STT_DELAY_S / 0.08, err
    assert printed == expected_output(tokenizer, tokens, turn_end, frames)
    assert printed.count("[end of turn]") >= 1
    data = json.loads(out.read_text())
    assert data["source"] == "microphone" and data["complete"] is True
    assert [w["text"] for w in data["words"]] == printed.replace("[end of turn]", "").split()
    assert len(data["end_of_turn"]) == printed.count("[end of turn]")
    lines = transcript.read_text().splitlines()
    assert lines and all(TRANSCRIPT_LINE.fullmatch(line) for line in lines)


def test_the_live_screen_shows_words_the_end_of_turn_head_and_the_status(stt):
    screen = ScreenText()
    session = transcribe.Session(transcribe_live.SttSettings(Timing(0.48), 4), screen, vad=True)
    view = LiveView("tiny stt bf16", session, screen, heads=4)
    for t, (token, text) in enumerate([(0, None), (5, " hello"), (0, None), (6, " there"), (3, None), (0, None)]):
        heads = np.zeros((4, 6), np.float32)
        heads[2, 0] = 0.2 if t < 4 else 0.9
        view.on_event(FrameEvent(index=t, text_token=token, text=text, encode_ms=10.0, lm_ms=20.0, decode_ms=0.0,
                                 input_level=0.1, output_level=0.0, extra_heads=heads))
    console = Console(width=100, height=20, record=True, force_terminal=False)
    console.print(view.render(console))
    shown = console.export_text()
    assert "hello there" in shown and "turn ended (end-of-turn 0.90)" in shown
    assert re.search(r"tiny stt bf16 \| encode 10 · lm 20 ms \| RTF 0\.\d\d \| backlog 0 \| drops 0 \| 2 words", shown)
    assert "you █" in shown and "Ctrl-C to stop" in shown
