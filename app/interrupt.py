"""Ending a subcommand from outside as cleanly as with Ctrl-C."""

from __future__ import annotations

import signal


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_termination() -> None:
    """`kill` (SIGTERM) and a closed terminal window (SIGHUP) raise KeyboardInterrupt, as Ctrl-C does, so the
    transcript and the recording are finished instead of cut off."""
    # Ctrl-C too, even when the program was started with SIGINT ignored (a background job of a script inherits
    # that, and Python then leaves SIGINT alone): a run or a conversation must always be stoppable cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):  # SIGHUP does not exist on Windows
            signal.signal(getattr(signal, name), _interrupt)
