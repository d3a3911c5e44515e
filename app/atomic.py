"""An output file written in full or not at all: a hidden file beside it, renamed into place when done."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO

from moshi_mlx import MoshiError


class AtomicFile:
    """Text written to a temporary file in the target's folder (`file`, or `temp` opened by another writer);
    `commit()` puts it in place with one rename, so the target is never half-written and an earlier file of that
    name stays as it was until then; `discard()` removes the temporary file and leaves the target untouched."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        folder = self.path.resolve().parent
        try:
            fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".part")
        except OSError as e:
            raise MoshiError(f"cannot write {path}: cannot create a file in {folder} "
                             f"({(e.strerror or str(e)).lower()})") from None
        self.temp = Path(temp)
        self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        self.done = False

    def commit(self) -> None:
        """Sync and rename into place (with the old file's mode, or the one a new file would get). Close the other
        writers of `temp` first."""
        if self.done:
            return
        self.done = True
        self.file.close()
        fd = os.open(self.temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            mode = self.path.stat().st_mode & 0o7777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(self.temp, mode)
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            self.file.close()
        self.temp.unlink(missing_ok=True)
