"""Speech-to-text words from the text stream: pieces joined into words, each timed in seconds of the input.

Kyutai's speech-to-text models (delayed streams modelling) write the text of what they hear `audio_delay_seconds`
late, one token per 80 ms frame. The token of frame t (sampled once frames 0..t are heard) is about the audio of
frame t, `delay` earlier: its time in the input is `t * FRAME_S - delay - prefix` (`prefix`: the silence put before a
file), as `moshi_mlx.stream.stt_file.input_time` says. The end-of-padding token (0) fills a frame between words:
a word starts at the frame after the 0 before it and ends where the next 0 is, the frames of its pieces (and of
any padding after them) in between (Kyutai's timestamp script, delayed-streams-modeling
scripts/stt_from_file_pytorch.py). A word that follows another with no 0 between starts at its first piece and
ends the word before it. The last word, if no 0 follows it, ends one second after its start or where the audio
ends, whichever is first (the same script). Times are clamped to the input (a word of the prefix starts at 0).
Padding (3) does not end a word; a piece that does not begin with a space continues the word before it (after a 0
it makes a word of its own, timed by the 0s around it, but is shown glued on, as the model wrote it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..codec import FRAME_S

END_OF_PADDING = 0  # a frame between words
LAST_WORD_S = 1.0  # the longest a word with no 0 after it lasts


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds of the input
    end: float


@dataclass(frozen=True)
class Timing:
    """How the frames map to the input: the model's delay and the silence put before the input."""

    delay_s: float
    prefix_s: float = 0.0
    frame_s: float = FRAME_S

    def at(self, frame: int) -> float:
        """The time in the input the text of `frame` is about (negative for the text of the prefix)."""
        return frame * self.frame_s - self.delay_s - self.prefix_s

    def heard(self, frames: int) -> float:
        """The time in the input the model has heard up to after `frames` frames (no delay taken off)."""
        return frames * self.frame_s - self.prefix_s

    @property
    def delay_frames(self) -> int:
        """Frames until the text of what was heard at a frame has come out."""
        return math.ceil(self.delay_s / self.frame_s - 1e-9)


@dataclass
class Update:
    """What one token decided: `text` to append to the running transcript (a new word begins with a space) and the
    words whose end is now known."""

    text: str = ""
    words: list[Word] = field(default_factory=list)


class WordAssembler:
    """Feed it each frame's token and display piece (`add`), then `finish`; it says what is decided as it goes.

    `duration_s`, when known (a file), bounds the times. It holds one word, so its memory does not grow.
    """

    def __init__(self, timing: Timing, duration_s: float | None = None):
        self.timing = timing
        self.duration_s = duration_s
        self.words = 0  # words ended so far
        self._pending = ""  # text of the current word not yet decided (more pieces may follow)
        self._text = ""  # the open word's text
        self._start: float | None = None  # the open word's start; None when no word is open
        self._after_gap: float | None = None  # the start of the next word, set by a 0 not yet followed by a word
        self._frames = 0

    def add(self, frame: int, token: int, piece: str | None) -> Update:
        """The token of `frame`, shown as `piece` (None for padding and special tokens)."""
        self._frames = frame + 1
        update = Update()
        continues = bool(piece) and self._start is not None and not piece.startswith(" ")
        if not continues:
            update.text, self._pending = self._pending, ""
        if token == END_OF_PADDING:
            self._end_word(self.timing.at(frame), update)
            self._after_gap = self.timing.at(frame + 1)
        elif piece:
            if continues:
                self._text += piece
                self._pending += piece
            else:
                start = self._after_gap if self._after_gap is not None else self.timing.at(frame)
                self._end_word(start, update)
                self._start, self._after_gap = start, None
                self._text = piece.strip()
                # Shown as the model wrote it: a piece without a leading space is glued on even after a 0.
                self._pending = (" " if piece.startswith(" ") else "") + self._text
        return update

    def finish(self) -> Update:
        """The input has ended: what is still pending, and the last word (ended as the module says)."""
        update = Update(text=self._pending)
        self._pending = ""
        if self._start is not None:
            end = min(self._start + LAST_WORD_S, self.timing.at(self._frames))
            if self.duration_s is not None:
                end = min(end, self.duration_s)
            self._end_word(end, update)
        return update

    def _end_word(self, end: float, update: Update) -> None:
        if self._start is None or not self._text:  # (a lone "▁" piece makes no word)
            self._start, self._text = None, ""
            return
        start = max(0.0, self._start)
        end = max(start, end)
        if self.duration_s is not None:
            start, end = min(start, self.duration_s), min(end, self.duration_s)
        update.words.append(Word(self._text, start, end))
        self.words += 1
        self._start, self._text = None, ""


class TurnDetector:
    """Kyutai's end of turn: the end-of-turn head (extra head 2) giving its first class more than `threshold`
    (delayed-streams-modeling, scripts/stt_from_mic_mlx.py: `vad_heads[2][0, 0, 0] > 0.5`).

    It fires when the probability rises past the threshold after having been at or below it: in the silence before
    anyone speaks it is high and must not fire (Kyutai's script instead fires once there, then after each printed
    word). A marker is due `timing.delay_frames` later, once the text of what was said before it has come out;
    its time is what the model had heard when it fired.
    """

    HEAD = 2

    def __init__(self, timing: Timing, threshold: float = 0.5):
        self.timing, self.threshold = timing, threshold
        self.probability = 0.0
        self._above = True
        self._due: list[tuple[int, float]] = []  # (frame it is shown at, the time it fired at)

    def update(self, frame: int, heads: object) -> None:
        """The frame's extra heads' probabilities (`[num_heads, dim]`), or None."""
        if heads is None:
            return
        self.probability = float(heads[self.HEAD][0])  # type: ignore[index]
        above = self.probability > self.threshold
        if above and not self._above:
            self._due.append((frame + self.timing.delay_frames, max(0.0, self.timing.heard(frame + 1))))
        self._above = above

    def due(self, frame: int) -> list[float]:
        """The times of the ends of turn to show at this frame."""
        ready = [moment for at, moment in self._due if at <= frame]
        self._due = [(at, moment) for at, moment in self._due if at > frame]
        return ready

    def flush(self) -> list[float]:
        """Every end of turn still due (the input has ended)."""
        ready, self._due = [moment for _, moment in self._due], []
        return ready
