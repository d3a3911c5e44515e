"""Helpers shared by several test files (fixtures are in conftest.py)."""

from __future__ import annotations

import socket
import threading

import numpy as np

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
