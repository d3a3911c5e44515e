"""Serving from a program's main thread: the event loop on a thread of its own, the model's work on the main one.

MLX work done on a thread that then ends can abort the interpreter as it exits ("terminate called without an active
exception", seen with mlx[cpu] 0.32 on Linux in most runs of a loop that stepped the model on a worker thread);
with every MLX call on the main thread, `serve` exits cleanly. Signals reach Python's main thread only: Ctrl-C and
SIGTERM are taken there and handed to the event loop, which ends the live conversation and stops.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from .web import Server, serve

_POLL_S = 0.05


class MainThreadExecutor(Executor):
    """Runs what is submitted on the thread that made it, inside `run_until`; a call submitted from that thread
    itself runs at once."""

    def __init__(self) -> None:
        self._owner = threading.current_thread()
        self._jobs: queue.Queue[tuple[Future, Callable[..., Any], tuple, dict]] = queue.Queue()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        future: Future = Future()
        if threading.current_thread() is self._owner:
            self._run(future, fn, args, kwargs)
        else:
            self._jobs.put((future, fn, args, kwargs))
        return future

    @staticmethod
    def _run(future: Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)

    def run_until(self, done: Callable[[], bool]) -> None:
        """Run the submitted calls, in order, until `done()` and none is left."""
        while not (done() and self._jobs.empty()):
            try:
                job = self._jobs.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            self._run(*job)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True


def run(server: Server, host: str, port: int, context: ssl.SSLContext | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; `server.inference` must be a `MainThreadExecutor` made on this thread."""
    assert isinstance(server.inference, MainThreadExecutor)
    state: dict[str, Any] = {}

    async def serving() -> None:
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        if state.get("asked"):
            state["stop"].set()
        await serve(server, host, port, context, on_ready, state["stop"])

    def event_loop() -> None:
        try:
            asyncio.run(serving())
        except BaseException as e:  # e.g. the port is taken: raised on the main thread below
            state["error"] = e

    def stop(signum: int, frame: object) -> None:
        state["asked"] = True
        if "loop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)

    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), stop) for name in names}
    thread = threading.Thread(target=event_loop, name="moshi-server")
    try:
        thread.start()
        server.inference.run_until(lambda: not thread.is_alive())
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        thread.join()
    if "error" in state:
        raise state["error"]
