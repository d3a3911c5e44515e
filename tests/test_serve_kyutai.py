"""Kyutai's own terminal client (`python -m moshi.client`, moshi 0.2.13) holds a conversation with `moshi-mlx serve`,
unchanged: its microphone and speaker are the virtual PulseAudio devices.

Skipped unless MOSHI_PT_PYTHON names a Python that has Kyutai's `moshi` (with sounddevice and sphn), e.g. the
reference venv of /work/shared/reference/README.md: `MOSHI_PT_PYTHON=/tmp/pt/bin/python`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from serve_helpers import voice_like

KYUTAI_PYTHON = os.environ.get("MOSHI_PT_PYTHON")
pytestmark = [pytest.mark.audio,
              pytest.mark.skipif(not KYUTAI_PYTHON, reason="set MOSHI_PT_PYTHON to a Python with Kyutai's moshi")]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> str:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""


def test_kyutai_terminal_client_talks_with_serve(virtual_audio, tiny_model, tmp_path):
    port = _free_port()
    microphone = tmp_path / "microphone.wav"
    soundfile.write(microphone, voice_like(6.0), 24000, subtype="PCM_16")
    server = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx", "serve", "--port", str(port), "--static", "none", "--seed", "3",
         "--transcript-dir", str(tmp_path / "t"), "--record-dir", str(tmp_path / "r"), *tiny_model.cli_args()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=virtual_audio.env,
    )
    client = None
    try:
        for line in server.stdout:
            if "ready at" in line:
                break
        with virtual_audio.record(tmp_path / "speaker.wav") as speaker:
            client = subprocess.Popen(
                [KYUTAI_PYTHON, "-m", "moshi.client", "--host", "localhost", "--port", str(port)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=virtual_audio.env,
            )
            time.sleep(3.0)  # torch's import, then the connection
            virtual_audio.play(microphone).wait()
            time.sleep(1.0)
            client_out = _stop(client)
        server_out = _stop(server)
    finally:
        for process in (client, server):
            if process is not None and process.poll() is None:
                process.kill()
    print("--- moshi.client printed ---\n" + client_out + "\n--- moshi-mlx serve printed ---\n" + server_out)
    assert server.returncode == 0, server_out
    # Ctrl-C makes Kyutai's client print "Lost connection" as its microphone callback meets the closed socket,
    # whatever the server: what counts is that the server saw a whole, well-formed conversation.
    assert "connected!" in client_out, client_out
    (ended,) = [line for line in server_out.splitlines() if "conversation 1 ended" in line]
    frames = int(re.search(r" (\d+) frames", ended).group(1))
    assert frames >= 40 and "faster" not in ended and "not Ogg" not in ended, ended
    (transcript,) = (tmp_path / "t").iterdir()
    words = " ".join(line.split("] ", 1)[-1] for line in transcript.read_text().splitlines()).split()
    assert words, server_out
    # Its text pieces, printed as they came, with its lag markers between them: the server's transcript (all but the
    # last words, which come after the client was interrupted) must be what it printed.
    printed = "".join(re.sub(r"\x1b\[[0-9;]*m|\[LAG\]", "", client_out).split())
    said = "".join(words)
    assert said[: int(0.8 * len(said))] in printed, (said, client_out)
    (recording,) = (tmp_path / "r").iterdir()
    user = soundfile.read(recording, dtype="float32")[0][:, 0]
    assert np.sqrt(np.mean(user**2)) > 0.01  # Kyutai's client sent its microphone
    heard, _ = soundfile.read(speaker, dtype="float32")
    assert np.sqrt(np.mean(heard**2)) > 1e-3  # and played Moshi's voice
