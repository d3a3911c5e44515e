"""`chat` with a persona on the virtual sound card: the persona is fed before the microphone opens, then the
conversation runs with the echo canceller on."""

import sys
import time

import numpy as np
import pytest
import soundfile as sf
from helpers import RunningApp

from moshi_mlx import Engine
from moshi_mlx.devtools.virtual_audio import speech_wav
from moshi_mlx.persona.session import Persona
from moshi_mlx.persona.voice import read_voice_audio

pytestmark = pytest.mark.audio


def voice_file(path):
    t = np.arange(int(0.8 * 24000)) / 24000
    sf.write(path, 0.1 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 5 * t)), 24000)
    return path


def test_persona_fed_before_the_microphone_opens(tmp_path, tiny_persona_model, virtual_audio):
    pipeline = tiny_persona_model.load_pipeline(seed=0)
    pipeline.persona = Persona.make(pipeline.tokenizer, "You are a pirate.", read_voice_audio(voice_file(
        tmp_path / "voice.wav")))
    steps = pipeline.persona.steps
    seen = []
    engine = Engine(pipeline, aec=True, on_prefill=lambda done, total: seen.append(("prefill", done, total)))
    opened = engine.devices.open

    def open_devices():
        seen.append(("open", pipeline.gen.step_index, pipeline.ready))
        opened()

    engine.devices.open = open_devices
    try:
        engine.start()
        virtual_audio.play(speech_wav(tmp_path / "speech.wav", "Ahoy, where is the treasure?")).wait(60)
        time.sleep(1.0)
    finally:
        stats = engine.stop()
        pipeline.close()
    assert seen[-2] == ("prefill", steps, steps) and seen[-1] == ("open", steps, True)
    assert engine.prefill_report.steps == steps
    assert engine.echo is not None  # the canceller ran
    assert stats.processed > 10


def test_chat_with_a_persona(tmp_path, tiny_persona_model, virtual_audio):
    command = [sys.executable, "-m", "moshi_mlx", "chat", *tiny_persona_model.cli_args(), "--seed", "0",
               "--persona", "You are a pirate.", "--voice-prompt", voice_file(tmp_path / "voice.wav"),
               "--transcript", tmp_path / "t.txt"]
    app = RunningApp(command)
    try:
        app.wait_for_err("Ctrl-C to stop", 180)
        virtual_audio.play(speech_wav(tmp_path / "speech.wav", "Ahoy, where is the treasure?")).wait(60)
        returncode = app.stop()
    finally:
        app.close()
    text, out = app.err, app.out
    assert returncode == 0, text
    lines = text.splitlines()
    starts = ('Persona: "You are a pirate." · voice voice.wav', "Persona read: ", "Audio: microphone",
              "Talking to PersonaPlex (model.safetensors bf16). Ctrl-C to stop.", "Stopped after ")
    assert all(any(line.startswith(start) for line in lines) for start in starts), text
    order = [next(i for i, line in enumerate(lines) if line.startswith(start)) for start in starts]
    assert order == sorted(order), lines
    assert "warning: echo cancellation off" not in text and "Traceback" not in text
    assert "] status: model.safetensors bf16 | encode " in out.splitlines()[-1]
