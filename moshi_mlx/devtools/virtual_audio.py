"""A private PulseAudio server with a virtual microphone and speaker, for live-audio tests and benchmarks.

Layout: sink `vmicsink` feeds the source `vmic` (the default input); sink `vspeaker` is the default output and
its monitor is recorded. Two loopbacks into `vdiscard` keep the null sinks rendering small blocks, so streams get
steady 80 ms callbacks from the start. PortAudio reaches the server through ALSA's pulse plugin, which needs
`PULSE_SERVER` in the environment when PortAudio initialises. Linux only: the Debian packages in PACKAGES.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..codec import SAMPLE_RATE

PACKAGES = "libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils sox espeak-ng"

CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=vspeaker rate={rate} channels=1 format=s16le
load-module module-null-sink sink_name=vmicsink rate={rate} channels=1 format=s16le
load-module module-remap-source source_name=vmic master=vmicsink.monitor
load-module module-null-sink sink_name=vdiscard rate={rate} channels=1 format=s16le
load-module module-loopback source=vspeaker.monitor sink=vdiscard latency_msec=60
load-module module-loopback source=vmicsink.monitor sink=vdiscard latency_msec=60
set-default-sink vspeaker
set-default-source vmic
"""


class AudioServerError(RuntimeError):
    """The server cannot start: a tool is missing, or it exited or hung."""


class VirtualAudio:
    """Start with `start()`, stop with `stop()`; `env` is what a program under test needs to reach it."""

    def __init__(self) -> None:
        missing = [tool for tool in ("pulseaudio", "pactl", "paplay", "parecord") if shutil.which(tool) is None]
        if missing:
            raise AudioServerError(
                f"live-audio tests need {', '.join(missing)}: install the Debian packages {PACKAGES} "
                "(.ci/run does), e.g. `apt-get install -y --no-install-recommends " + PACKAGES + "`"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="va-", dir="/tmp"))  # the socket path must stay short
        (self.dir / "run").mkdir(mode=0o700)
        (self.dir / "home").mkdir()
        self.socket = self.dir / "run" / "native"
        self.log = self.dir / "pa.log"
        self.env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(self.dir / "run"),
            HOME=str(self.dir / "home"),
            PULSE_SERVER=f"unix:{self.socket}",
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> VirtualAudio:
        config = self.dir / "va.pa"
        config.write_text(CONFIG.format(socket=self.socket, rate=SAMPLE_RATE))
        self.process = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "-F", str(config),
             f"--log-target=file:{self.log}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise AudioServerError(f"pulseaudio exited ({self.process.returncode}): see {self.log}")
            if time.monotonic() > deadline:
                self.stop()
                raise AudioServerError(f"pulseaudio did not become ready in {timeout:.0f} s: see {self.log}")
            time.sleep(0.1)
        return self

    def _pactl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=5)

    def _ready(self) -> bool:
        """Reachable, and every sink renders small blocks (new null sinks start 2 s "ahead")."""
        if self._pactl("info").returncode != 0:
            return False
        sinks = self._pactl("list", "sinks").stdout
        latencies = [float(line.split()[1]) for line in sinks.splitlines() if line.strip().startswith("Latency:")]
        return len(latencies) >= 3 and all(lat < 100_000 for lat in latencies)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def play(self, wav: str | Path) -> subprocess.Popen:
        """Start playing a WAV into the virtual microphone; `wait()` on the result to finish."""
        return subprocess.Popen(["paplay", "--device=vmicsink", str(wav)], env=self.env)

    @contextmanager
    def record(self, wav: str | Path) -> Iterator[Path]:
        """Record the virtual speaker into a 24 kHz mono WAV while the block runs."""
        rec = subprocess.Popen(
            ["parecord", "--device=vspeaker.monitor", f"--rate={SAMPLE_RATE}", "--channels=1", "--format=s16le",
             "--latency-msec=20", str(wav)],
            env=self.env,
        )
        try:
            time.sleep(0.2)  # a monitor only carries what is played after the recorder connects
            yield Path(wav)
        finally:
            rec.send_signal(signal.SIGINT)  # SIGINT writes the WAV header
            try:
                rec.wait(10)
            except subprocess.TimeoutExpired:
                rec.kill()
                rec.wait()


def reinitialise_portaudio() -> None:
    """PortAudio lists ALSA's pulse devices only if the server was reachable when it initialised."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


def speech_wav(path: str | Path, text: str) -> Path:
    """Spoken English (espeak-ng) as a 24 kHz mono 16-bit WAV."""
    path = Path(path)
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)], check=True,
                   capture_output=True)
    raw.unlink()
    return path
