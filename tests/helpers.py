"""Helpers shared by several test files (fixtures are in conftest.py)."""

from __future__ import annotations

import codecs
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from moshi_mlx import FRAME_SIZE, Pipeline
from moshi_mlx.devtools.tiny_model import TinyModel


def load_pipeline(tiny_model: TinyModel, seed: int = 0) -> Pipeline:
    return tiny_model.load_pipeline(seed)


def frames_of(x: np.ndarray) -> list[np.ndarray]:
    """The whole frames of `x` (a last partial frame is left out)."""
    return [x[i : i + FRAME_SIZE] for i in range(0, len(x) - FRAME_SIZE + 1, FRAME_SIZE)]


def level_db(x: np.ndarray) -> float:
    """Mean power in dB relative to full scale."""
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


class RefusingHub:
    """A local stand-in for huggingface.co that counts connections and drops them, as a network that is down."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.server.close()


def wait_for(check, timeout: float, what: str):
    """`check()`'s first true result, polled until `timeout` seconds; the test fails after that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class RunningApp:
    """A command run in the background with its stdout and stderr each read by one thread, as they come.

    Each pipe has exactly one reader: `Popen.communicate` beside a reader thread would split the lines between the
    two and lose some.
    """

    def __init__(self, command, **kwargs) -> None:
        self.process = subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        **kwargs)
        self.out_chunks: list[tuple[float, str]] = []  # (time.monotonic() when read, text)
        self._err_chunks: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe, timed: bool) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(pipe.fileno(), 65536):
            text = decoder.decode(chunk)
            if timed:
                self.out_chunks.append((time.monotonic(), text))
            else:
                self._err_chunks.append(text)

    @property
    def out(self) -> str:
        return "".join(text for _, text in self.out_chunks)

    @property
    def err(self) -> str:
        return "".join(self._err_chunks)

    def wait_for_err(self, text: str, timeout: float) -> None:
        """Until `text` is on stderr; the test fails if the app exits or the time runs out first."""
        wait_for(lambda: text in self.err or self.process.poll() is not None, timeout, repr(text))
        assert text in self.err, f"the app exited ({self.process.returncode}) before saying {text!r}:\n{self.err}"

    def stop(self, signum: int = signal.SIGINT, timeout: float = 60) -> int:
        """Sends `signum`, waits for the exit and for both outputs to be read to their end; the exit status."""
        self.process.send_signal(signum)
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
