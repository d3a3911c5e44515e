"""Moshi's words in a conversation grouped into timestamped lines, each written to a file as it ends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moshi_mlx.stream.recording import TranscriptWriter

SENTENCE_END = (".", "!", "?")


@dataclass
class Line:
    start: float  # seconds into the conversation (the position in the recording)
    text: str

    def format(self) -> str:
        minutes, secs = divmod(self.start, 60)
        return f"[{int(minutes):02d}:{secs:04.1f}] {self.text}"


class Transcript:
    """Moshi's words grouped into timestamped lines, written to `path` (when given) as each line ends.

    A line ends with a sentence, after `pause_s` without words, at the next word once it is `max_chars` long, or
    anywhere at twice that (a model may babble without spaces).
    """

    def __init__(self, path: str | Path | None = None, pause_s: float = 1.0, max_chars: int = 100):
        self.pause_s, self.max_chars = pause_s, max_chars
        self.current: Line | None = None
        self.count = 0  # lines ended so far (the lines themselves go to the file)
        self._last_word = 0.0
        # Whole lines are written, each flushed as it ends; nothing is added at close.
        self._file = TranscriptWriter(path, end="", name=f"transcript {path}") if path is not None else None

    def add(self, seconds: float, piece: str | None) -> Line | None:
        """Moshi's piece at this time (None for padding); returns the line this ended, if any."""
        done = None
        if not piece:
            if self.current is not None and seconds - self._last_word >= self.pause_s:
                done = self.finish()
            return done
        if self.current is not None:
            length = len(self.current.text)
            if length >= 2 * self.max_chars or (piece.startswith(" ") and length >= self.max_chars):
                done = self.finish()
        if self.current is None:
            piece = piece.lstrip()
            if not piece:
                return done
            self.current = Line(seconds, "")
        self.current.text += piece
        self._last_word = seconds
        if self.current.text.endswith(SENTENCE_END):
            done = self.finish()
        return done

    def finish(self) -> Line | None:
        """End the line in progress (if any) and write it."""
        line, self.current = self.current, None
        if line is None:
            return None
        self.count += 1
        if self._file is not None:
            self._file.write(line.format() + "\n")
        return line

    def close(self) -> None:
        self.finish()
        if self._file is not None:
            self._file.close()
            self._file = None
