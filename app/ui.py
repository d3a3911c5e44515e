"""What a person sees while talking: Moshi's words as they are sampled, the levels, how well the machine keeps up.

`ChatView` is fed the engine's `FrameEvent`s on the inference thread; `render()` draws it with rich for a live
terminal (called from rich's refresh thread), `PlainOutput` prints plain lines instead when stdout is not one.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from moshi_mlx import FrameEvent
from moshi_mlx.codec import FRAME_MS, FRAME_S

from .transcript import Line, Transcript

TIMING_WINDOW = 12  # frames averaged for the stage timings: about one second
LAG_EPISODE_S = 2.0  # skips closer together than this are one lag episode, shown as one marker


def clock(seconds: float) -> str:
    """00:42, or 1:02:03 past an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def decibels(level: float, floor: float = -60.0) -> float:
    """An RMS level in [0, 1] as dBFS, never below `floor`."""
    return max(floor, 20 * math.log10(level)) if level > 0 else floor


class SessionClock:
    """How long a live session has run: from `start()` (the devices open), or from construction before that."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def start(self) -> None:
        """The session starts now (the devices are open)."""
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def show_until_stopped(engine: Any, console: Console, render: Callable[[Console], Any],
                       tick: Callable[[], None] | None = None) -> None:
    """Until Ctrl-C or the engine stops (on an error): `render` on rich's live screen, or, in plain mode (`tick`
    given), `tick()` ten times a second to print what is new."""

    def wait() -> None:
        while engine.running:
            if tick is not None:
                tick()
            time.sleep(0.1)

    try:
        if tick is not None:
            wait()
        else:
            with Live(console=console, get_renderable=lambda: render(console), refresh_per_second=8,
                      redirect_stderr=False):
                wait()
    except KeyboardInterrupt:
        pass


class ChatView(SessionClock):
    """The state of a conversation for display, updated once per frame by `on_event`."""

    def __init__(self, model: str, transcript: Transcript, persona: str | None = None, max_segments: int = 400):
        super().__init__()
        self.model = model
        self.persona = persona  # the role and voice the model was given (PersonaPlex), for the header
        self.transcript = transcript
        self.frames = 0
        self.last: FrameEvent | None = None
        self._timings: deque[tuple[float, float, float, float]] = deque(maxlen=TIMING_WINDOW)
        # What the live screen shows, oldest first: [kind, value], kind "time", "word", "lag" (seconds), "break".
        self.segments: deque[list[Any]] = deque(maxlen=max_segments)
        # Lines ended and notices since PlainOutput last looked (nobody looks on the live screen: bounded).
        self.finished: deque[Line] = deque(maxlen=256)
        self.notices: deque[str] = deque(maxlen=16)
        self.skipped_s = 0.0  # input skipped to catch up, not yet reported by PlainOutput
        self._lag_marker: list[Any] | None = None
        self._lag_time = 0.0
        self._lock = threading.Lock()

    def on_event(self, event: FrameEvent) -> None:
        with self._lock:
            previous, self.last = self.last, event
            self.frames += 1
            self._timings.append((event.encode_ms, event.lm_ms, event.decode_ms, event.frame_ms))
            if event.notice:
                self.notices.append(event.notice)
                self.segments.append(["note", event.notice])
                self.segments.append(["break", ""])
            newly_dropped = event.dropped - (previous.dropped if previous else 0)
            if newly_dropped > 0:
                self._lag(newly_dropped * FRAME_S)
            self._words(event.index * FRAME_S, event.text)

    def _words(self, seconds: float, piece: str | None) -> None:
        before = self.transcript.current
        done = self.transcript.add(seconds, piece)
        after = self.transcript.current
        if done is not None:
            self.finished.append(done)
        # The line this piece started, if it started one (`is`: two lines may hold equal text).
        new_line = next((line for line in (after, done) if line is not None and line is not before), None)
        if new_line is not None:
            if before is not None and done is before:  # the long line ended where this word starts
                self.segments.append(["break", ""])
            self.segments.append(["time", clock(new_line.start)])
            self.segments.append(["word", (piece or "").lstrip()])
        elif piece and before is not None:
            self.segments.append(["word", piece])
        if done is not None and after is None:
            self.segments.append(["break", ""])

    def _lag(self, seconds: float) -> None:
        """Input skipped to catch up, shown inline: one marker per lag episode, kept at the end while it lasts."""
        self.skipped_s += seconds
        now = time.monotonic()
        marker = self._lag_marker
        if marker is not None and now - self._lag_time < LAG_EPISODE_S:
            marker[1] += seconds
            if self.segments and self.segments[-1] is not marker:
                with contextlib.suppress(ValueError):  # already scrolled out
                    self.segments.remove(marker)
                self.segments.append(marker)
        else:
            self._lag_marker = ["lag", seconds]
            self.segments.append(self._lag_marker)
        self._lag_time = now

    def timings(self) -> tuple[float, float, float, float]:
        """Mean encode, LM and decode ms over the last second, and what a frame cost the loop (their sum, or the
        slowest when the stages overlap)."""
        with self._lock:
            rows = list(self._timings)
        if not rows:
            return 0.0, 0.0, 0.0, 0.0
        encode, lm, decode, frame = (sum(col) / len(rows) for col in zip(*rows, strict=True))
        return encode, lm, decode, frame

    def status_fields(self) -> list[tuple[str, str]]:
        """(text, style) pieces of the status line."""
        encode, lm, decode, frame = self.timings()
        rtf = frame / FRAME_MS
        last = self.last
        backlog, dropped, underruns = (last.backlog, last.dropped, last.underruns) if last else (0, 0, 0)
        rtf_style = "green" if rtf <= 0.8 else "yellow" if rtf <= 1.0 else "bold red"
        return [
            (self.model, "bold"),
            (f"encode {encode:.0f} · lm {lm:.0f} · decode {decode:.0f} ms", ""),
            (f"RTF {rtf:.2f}", rtf_style),
            *([(f"latency {last.latency_ms:.0f} ms", "")] if last is not None and last.latency_ms is not None else []),
            (f"backlog {backlog}", "yellow" if backlog else ""),
            (f"drops {dropped}", "yellow" if dropped else ""),
            (f"underruns {underruns}", "yellow" if underruns else ""),
            *([(f"echo -{last.echo_db:.0f} dB", "")] if last is not None and last.echo_db is not None else []),
            (clock(self.elapsed), "bold"),
        ]

    def status_line(self) -> str:
        return " | ".join(text for text, _ in self.status_fields())

    def render(self, console: Console) -> Any:
        """The live screen: Moshi's words (the latest that fit), the levels, the status line."""
        with self._lock:
            segments = [list(s) for s in self.segments]
            last = self.last
        words = Text()
        for kind, value in segments:
            if kind == "time":
                words.append(f"{value} ", style="dim")
            elif kind == "lag":
                words.append(f" lag: skipped {value:.2f} s ", style="black on yellow")
            elif kind == "note":
                words.append(f" {value} ", style="black on cyan")
            elif kind == "break":
                words.append("\n")
            else:
                words.append(value)
        if not segments:
            words.append("(Moshi is listening; its words appear here)", style="dim")
        width, height = console.size
        status = pack(self.status_fields(), width)
        levels = Text()
        levels.append("you ", style="bold")
        levels.append_text(meter(last.input_level if last else 0.0))
        levels.append("   moshi ", style="bold")
        levels.append_text(meter(last.output_level if last else 0.0))
        levels.append("   Ctrl-C to stop", style="dim")
        header = Text(f"persona: {self.persona}", style="bold cyan", no_wrap=True, overflow="ellipsis") \
            if self.persona else None
        below = len(status.wrap(console, width)) + len(levels.wrap(console, width)) + 1 + (header is not None)
        lines = list(words.wrap(console, width))[-max(3, height - below) :]
        body = Group(Text("\n").join(lines), Text(""), levels, status)
        return Group(header, body) if header is not None else body


def pack(fields: list[tuple[str, str]], width: int) -> Text:
    """Fields joined by " | ", wrapped between fields (never inside one) to lines of at most `width`."""
    text, used = Text(), 0
    for field, style in fields:
        if used and used + 3 + len(field) + 2 > width:  # + 2: room for the " |" that may end this line
            text.append(" |\n", style="dim")
            used = 0
        elif used:
            text.append(" | ", style="dim")
            used += 3
        text.append(field, style=style)
        used += len(field)
    return text


def meter(level: float, width: int = 16, floor: float = -60.0) -> Text:
    """A level bar from `floor` to 0 dBFS, with its value."""
    db = decibels(level, floor)
    filled = round(width * (db - floor) / -floor)
    bar = Text("█" * filled, style="green" if db < -6 else "red")
    bar.append("·" * (width - filled), style="dim")
    bar.append(f" {db:4.0f} dB")
    return bar


class PlainOutput:
    """Plain lines for a pipe or a file: Moshi's lines as they end, lag as it happens, a status line now and then."""

    def __init__(self, view: ChatView, stream: IO[str], status_every_s: float = 10.0, lag_every_s: float = 5.0):
        self.view, self.stream = view, stream
        self.status_every_s, self.lag_every_s = status_every_s, lag_every_s
        self._next_status = status_every_s
        self._next_lag = 0.0
        self._skipped = 0.0

    def update(self) -> None:
        """Print what happened since the last call (call it from the main thread, a few times a second)."""
        view = self.view
        with view._lock:
            lines = list(view.finished)
            view.finished.clear()
            notices = list(view.notices)
            view.notices.clear()
            skipped, view.skipped_s = view.skipped_s, 0.0
        for line in lines:
            self._print(line.format())
        for notice in notices:
            self._print(f"[{clock(view.elapsed)}] note: {notice}")
        self._skipped += skipped
        if self._skipped and view.elapsed >= self._next_lag:
            self._next_lag = view.elapsed + self.lag_every_s
            frame = view.timings()[3]
            self._print(
                f"[{clock(view.elapsed)}] lag: skipped {self._skipped:.2f} s of your audio to keep up "
                f"(frame {frame:.0f} ms > {FRAME_MS:.0f} ms)"
            )
            self._skipped = 0.0
        if view.elapsed >= self._next_status:
            self._next_status = view.elapsed + self.status_every_s
            self._print(f"[{clock(view.elapsed)}] status: {view.status_line()}")

    def finish(self) -> None:
        """After the conversation: the line in progress, what is left to report, a last status line."""
        with self.view._lock:
            line = self.view.transcript.finish()
            if line is not None:
                self.view.finished.append(line)
        self._next_status = self._next_lag = 0.0
        self.update()

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
