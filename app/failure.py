"""An unexpected failure: the traceback goes to a log file, the terminal gets one line that names it."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from moshi_mlx.errors import first_line

LOG_DIR_ENV = "MOSHI_MLX_LOG_DIR"
LOGS_KEPT = 20


class Failed(Exception):
    """A failure in the middle of the work, with what was going on (e.g. "the conversation stopped at 05:27")."""

    def __init__(self, what: str, cause: BaseException):
        super().__init__(what)
        self.what, self.cause = what, cause


def log_dir() -> Path:
    """`$MOSHI_MLX_LOG_DIR`, else `moshi-mlx/logs` in the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache)."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "moshi-mlx" / "logs"


def write_log(subcommand: str, error: BaseException) -> Path | None:
    """The traceback (the whole message included) in a new log file; the oldest logs beyond LOGS_KEPT go."""
    folder = log_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{subcommand}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        for old in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-LOGS_KEPT]:
            old.unlink(missing_ok=True)
        return path
    except OSError:
        return None


def describe(subcommand: str, error: BaseException) -> str:
    """The one line shown for an unexpected error (after `error: `), with the log file that holds the details."""
    cause = error.cause if isinstance(error, Failed) else error
    what = f"{error.what}: " if isinstance(error, Failed) else f"moshi-mlx {subcommand} failed: "
    log = write_log(subcommand, cause)
    where = f"the details are in {log}" if log is not None else f"could not write a log file in {log_dir()}"
    return f"{what}{first_line(cause)} ({type(cause).__name__}); {where}"
