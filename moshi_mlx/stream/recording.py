"""Writing a conversation as it happens: the audio (user and Moshi) and Moshi's transcript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from ..codec import SAMPLE_RATE
from ..errors import MoshiError, first_line


class WavRecorder:
    """A 24 kHz 16-bit recording written frame by frame: Moshi alone (mono) or the user left and Moshi right (stereo).

    WAV whatever the file is called (FLAC when it ends in .flac).

    Moshi's frame written with the user's frame t is the one produced at step t, as the two would be heard.
    `close()` finishes the file; the header is kept up to date as frames are written, so what was written stays a
    valid WAV for every player if the program dies (a crash, `kill -9`).
    """

    def __init__(self, path: str | Path, stereo: bool = True):
        self.path = Path(path).expanduser()
        self.stereo = stereo
        try:
            self._file = soundfile.SoundFile(
                str(self.path), "w", samplerate=SAMPLE_RATE, channels=2 if stereo else 1, subtype="PCM_16",
                format="FLAC" if self.path.suffix.lower() == ".flac" else "WAV",
            )
        except (soundfile.LibsndfileError, OSError, RuntimeError) as e:
            raise MoshiError(f"cannot write {self.path}: {first_line(e)}") from None
        _update_header_on_every_write(self._file)
        self.frames = 0

    def write(self, user: np.ndarray, moshi: np.ndarray | None) -> None:
        """One frame each; `moshi` None (Moshi has not spoken yet) is written as silence."""
        moshi = np.zeros_like(user) if moshi is None else moshi
        data = np.stack([user, moshi], axis=1) if self.stereo else moshi
        self._file.write(np.clip(data, -1.0, 1.0))
        self.frames += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# libsndfile's SFC_SET_UPDATE_HEADER_AUTO (sndfile.h), which soundfile does not name.
_SFC_SET_UPDATE_HEADER_AUTO = 0x1061


def _update_header_on_every_write(file: soundfile.SoundFile) -> None:
    """Have libsndfile rewrite the WAV header's sizes after each write (by default only `close()` does)."""
    snd, ffi = soundfile._snd, soundfile._ffi  # soundfile's own handle on libsndfile
    snd.sf_command(file._file, _SFC_SET_UPDATE_HEADER_AUTO, ffi.NULL, snd.SF_TRUE)


class TranscriptWriter:
    """Moshi's words, appended piece by piece to a text file and flushed as they come.

    `end` is written by `close()`; `name` is how an error names the file (default: its path).
    """

    def __init__(self, path: str | Path, end: str = "\n", name: str | None = None):
        self.path = Path(path).expanduser()
        self.end = end
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise MoshiError(f"cannot write {name or self.path}: {e.strerror}") from None
        self.chars = 0  # written so far (the text itself lives in the file only)

    def write(self, piece: str | None) -> None:
        if not piece:
            return
        if not self.chars:
            piece = piece.lstrip()  # a first word's piece starts with the word separator
        self.chars += len(piece)
        self._file.write(piece)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.write(self.end)
            self._file.close()
