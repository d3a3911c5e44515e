"""The outputs of `moshi-mlx transcribe`: plain text, timed words, SubRip (SRT), WebVTT and JSON, written as the
words are decided, each to any text stream (the terminal, or an `AtomicFile`).

Every writer takes the same calls: `text(s)` (decided text: a new word begins with a space), `word(w)` (a word whose
end is known), `end_of_turn(seconds)` and `close(complete)`. Nothing grows with the input but the JSON writer's text.
"""

from __future__ import annotations

import json
import textwrap
from typing import IO, Any

from moshi_mlx.stream.words import Word

FORMATS = ("text", "srt", "vtt", "json")
TURN_MARK = "[end of turn]"
CUE_LINE = 42  # two lines of 42 characters at most: the usual subtitle width
CUE_S = 7.0
CUE_PAUSE_S = 1.0  # a silence this long between words starts a new cue
MIN_CUE_S = 0.08  # a cue lasts at least one frame
SENTENCE_END = (".", "!", "?", "…")
EPS = 1e-6  # word and turn times are sums of frames: equal within rounding


def clock(seconds: float, decimal: str = ".") -> str:
    """00:01:02.345 (SRT wants a comma before the milliseconds)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


class Writer:
    """The calls every format takes; each ignores what it does not use."""

    def __init__(self, out: IO[str]):
        self.out = out

    def text(self, text: str) -> None: ...

    def word(self, word: Word) -> None: ...

    def end_of_turn(self, seconds: float) -> None: ...

    def close(self, complete: bool = True) -> None:
        self.out.flush()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class TextWriter(Writer):
    """The words as they are decided, a space between them; an end of turn ends the line with a marker."""

    def __init__(self, out: IO[str]):
        super().__init__(out)
        self._line_start = True
        self._empty = True

    def text(self, text: str) -> None:
        if self._line_start:
            text = text.lstrip()
        if text:
            self._write(text)
            self._line_start = self._empty = False

    def end_of_turn(self, seconds: float) -> None:
        if not self._line_start:
            self._write(f" {TURN_MARK}\n")
            self._line_start = True

    def close(self, complete: bool = True) -> None:
        if not self._line_start:
            self._write("\n")
            self._line_start = True
        super().close()


class TimedWordsWriter(Writer):
    """One word a line, `start end word` in seconds of the input, as each word's end becomes known; an end of turn is
    a line of its own, placed before the first word that starts after it (or at once, if that word is out)."""

    def __init__(self, out: IO[str]):
        super().__init__(out)
        self._turn_ends: list[float] = []
        self._last_start = -1.0

    def word(self, word: Word) -> None:
        self._turns_before(word.start)
        self._write(f"{word.start:8.2f} {word.end:8.2f}  {word.text}\n")
        self._last_start = word.start

    def end_of_turn(self, seconds: float) -> None:
        self._turn_ends.append(seconds)
        if seconds - EPS <= self._last_start:  # words after it are out already
            self._turns_before(seconds)

    def _turns_before(self, seconds: float) -> None:
        while self._turn_ends and self._turn_ends[0] - EPS <= seconds:
            self._write(f"{self._turn_ends.pop(0):8.2f}           {TURN_MARK}\n")

    def close(self, complete: bool = True) -> None:
        self._turns_before(float("inf"))
        super().close()


class CueWriter(Writer):
    """Subtitles: words grouped into cues of at most two lines of 42 characters and 7 s, a new cue after a sentence,
    a pause of a second or an end of turn. Each cue is written as it closes."""

    header = ""

    def __init__(self, out: IO[str]):
        super().__init__(out)
        self.count = 0
        self._words: list[Word] = []
        self._turn_ends: list[float] = []  # ends of turn still ahead of the cue's words
        if self.header:
            self._write(self.header)

    def word(self, word: Word) -> None:
        turn = bool(self._turn_ends) and word.start >= self._turn_ends[0] - EPS
        self._turn_ends = [t for t in self._turn_ends if t - EPS > word.start]
        if self._words and (turn or self._breaks_before(word)):
            self._flush()
        self._words.append(word)
        if word.text.endswith(SENTENCE_END):
            self._flush()

    def _breaks_before(self, word: Word) -> bool:
        last, first = self._words[-1], self._words[0]
        return (len(_lines(self._words + [word])) > 2 or word.end - first.start > CUE_S
                or word.start - last.end >= CUE_PAUSE_S)

    def end_of_turn(self, seconds: float) -> None:
        # The marker comes the model's delay after the turn ended: words after it may be in the cue already.
        before = [w for w in self._words if w.start < seconds - EPS]
        if len(before) < len(self._words):
            after, self._words = self._words[len(before):], before
            self._flush()
            self._words = after
        else:
            self._turn_ends.append(seconds)

    def _flush(self) -> None:
        if not self._words:
            return
        start, end = self._words[0].start, self._words[-1].end
        self.count += 1
        self._write(self.cue(self.count, start, max(end, start + MIN_CUE_S), "\n".join(_lines(self._words))))
        self._words = []

    def cue(self, index: int, start: float, end: float, text: str) -> str:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        self._flush()
        super().close()


def _lines(words: list[Word]) -> list[str]:
    """A cue's words as lines of at most CUE_LINE characters (a longer word alone on its line)."""
    text = " ".join(w.text for w in words)
    return textwrap.wrap(text, CUE_LINE, break_long_words=False, break_on_hyphens=False) or [text]


class SrtWriter(CueWriter):
    def cue(self, index: int, start: float, end: float, text: str) -> str:
        return f"{index}\n{clock(start, ',')} --> {clock(end, ',')}\n{text}\n\n"


class VttWriter(CueWriter):
    header = "WEBVTT\n\n"

    def cue(self, index: int, start: float, end: float, text: str) -> str:
        return f"{clock(start)} --> {clock(end)}\n{text}\n\n"


class JsonWriter(Writer):
    """One JSON object: `about` first, then `words` (text, start, end) written as they come, then the ends of turn,
    the whole text, and whether the input was transcribed to its end (`complete`)."""

    def __init__(self, out: IO[str], about: dict[str, Any]):
        super().__init__(out)
        self._turns: list[float] = []
        self._text: list[str] = []  # the decided text, as the terminal shows it
        self._first = True
        self._write("{" + "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in about.items()) + '"words": [')

    def word(self, word: Word) -> None:
        item = {"text": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}
        self._write(("\n  " if self._first else ",\n  ") + json.dumps(item, ensure_ascii=False))
        self._first = False

    def text(self, text: str) -> None:
        self._text.append(text)

    def end_of_turn(self, seconds: float) -> None:
        self._turns.append(round(seconds, 3))

    def close(self, complete: bool = True) -> None:
        tail = {"end_of_turn": self._turns, "text": "".join(self._text).strip(), "complete": complete}
        self._write("\n]" + "".join(f", {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in tail.items())
                    + "}\n")
        super().close()


def make_writer(format: str, out: IO[str], timestamps: bool = False, about: dict[str, Any] | None = None) -> Writer:
    """The writer of a `--format` (`timestamps`: text as timed words)."""
    if format == "text":
        return TimedWordsWriter(out) if timestamps else TextWriter(out)
    if format == "srt":
        return SrtWriter(out)
    if format == "vtt":
        return VttWriter(out)
    if format == "json":
        return JsonWriter(out, about or {})
    raise ValueError(f"unknown format {format!r}")


class Fanout(Writer):
    """Several writers fed the same calls."""

    def __init__(self, writers: list[Writer]):
        self.writers = writers

    def text(self, text: str) -> None:
        for w in self.writers:
            w.text(text)

    def word(self, word: Word) -> None:
        for w in self.writers:
            w.word(word)

    def end_of_turn(self, seconds: float) -> None:
        for w in self.writers:
            w.end_of_turn(seconds)

    def close(self, complete: bool = True) -> None:
        for w in self.writers:
            w.close(complete)
