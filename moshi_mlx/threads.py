"""Threads that run MLX work.

MLX keeps streams per thread. With mlx 0.32 on Linux, a process whose worker thread ran MLX work and ended without
destroying its streams aborts at exit now and then ("terminate called without an active exception": 3 runs in 20
of a 20-line script here; ml-explore/mlx#3126); destroying them as the thread ends (`mx.clear_streams`, which the
MLX maintainers ask of every thread) took that to 0 in 60. Every thread of ours that may run MLX work is made here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import mlx.core as mx


def mlx_thread(target: Callable[..., Any], *, name: str, args: tuple = (), daemon: bool = False) -> threading.Thread:
    """A thread (not started) that runs `target(*args)`, then destroys the MLX streams it made."""

    def run() -> None:
        try:
            target(*args)
        finally:
            mx.clear_streams()

    return threading.Thread(target=run, name=name, daemon=daemon)
