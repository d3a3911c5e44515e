"""`moshi-mlx transcribe` with no file: live from the microphone, on the rich screen (or plain lines).

The engine of `chat` with the microphone alone (`AudioDevices(speaker=False)`): the same device choice,
resampling and lag policy. Frames go to the same `Session` as a file's; the screen shows the words as they are
decided, the end-of-turn head and how well the machine keeps up. On Ctrl-C the engine runs the model's delay in
silence (`Engine.tail_frames`) so that the last words come out, then everything is written and closed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from collections import deque
from contextlib import nullcontext
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from moshi_mlx import Engine, FrameEvent, MoshiError
from moshi_mlx.codec import FRAME_MS
from moshi_mlx.stream.audio_io import find_device
from moshi_mlx.stream.devices import AudioDevices
from moshi_mlx.stream.words import Timing, TurnDetector, Word

from .atomic import AtomicFile
from .checks import check_outputs
from .failure import Failed
from .model_args import check_model_files, model_inputs
from .stt_args import SttSettings, config_source, load_stt, model_label, resolve_stt_files
from .transcribe import Session
from .transcribe_formats import TURN_MARK, Fanout, TextWriter, TimedWordsWriter, Writer, make_writer
from .transcript import Transcript
from .ui import SessionClock, clock, meter, pack, show_until_stopped

TIMING_WINDOW = 12  # frames averaged for the timings: about one second


class ScreenText(Writer):
    """The decided text and the ends of turn, kept for the screen (the latest only), and every call for the plain
    lines (until taken)."""

    def __init__(self, kept: int = 600):
        self.segments: deque[str] = deque(maxlen=kept)  # None-free pieces of text; "\n" ends a turn
        self.fresh: deque[tuple[str, Any]] = deque(maxlen=4096)
        self.lock = threading.Lock()

    def text(self, text: str) -> None:
        with self.lock:
            self.segments.append(text)
            self.fresh.append(("text", text))

    def word(self, word: Word) -> None:
        with self.lock:
            self.fresh.append(("word", word))

    def end_of_turn(self, seconds: float) -> None:
        with self.lock:
            self.segments.append("\n")
            self.fresh.append(("turn", seconds))

    def close(self, complete: bool = True) -> None:
        pass

    def take(self) -> list[tuple[str, Any]]:
        with self.lock:
            calls = list(self.fresh)
            self.fresh.clear()
        return calls


class LiveView(SessionClock):
    """A live transcription's state for display, updated once per frame on the engine's thread."""

    def __init__(self, model: str, session: Session, screen: ScreenText, heads: int):
        super().__init__()
        self.model, self.session, self.screen, self.heads = model, session, screen, heads
        self.last: FrameEvent | None = None
        self.turn_end = 0.0  # the end-of-turn head's probability at the last step
        self._timings: deque[tuple[float, float, float]] = deque(maxlen=TIMING_WINDOW)
        self._lock = threading.Lock()

    def on_event(self, event: FrameEvent) -> None:
        with self._lock:
            self.last = event
            self._timings.append((event.encode_ms, event.lm_ms, event.frame_ms))
            heads = event.extra_heads
            if heads is not None and len(heads) > TurnDetector.HEAD:
                self.turn_end = float(heads[TurnDetector.HEAD][0])
        self.session.on_event(event)

    def status_fields(self) -> list[tuple[str, str]]:
        with self._lock:
            rows, last = list(self._timings), self.last
        encode, lm, frame = (sum(c) / len(rows) for c in zip(*rows, strict=True)) if rows else (0.0, 0.0, 0.0)
        rtf = frame / FRAME_MS
        backlog, dropped = (last.backlog, last.dropped) if last else (0, 0)
        return [
            (self.model, "bold"),
            (f"encode {encode:.0f} · lm {lm:.0f} ms", ""),
            (f"RTF {rtf:.2f}", "green" if rtf <= 0.8 else "yellow" if rtf <= 1.0 else "bold red"),
            (f"backlog {backlog}", "yellow" if backlog else ""),
            (f"drops {dropped}", "yellow" if dropped else ""),
            (f"{self.session.words.words} words", ""),
            (clock(self.elapsed), "bold"),
        ]

    def voice(self) -> Text:
        """The microphone's level and the end-of-turn head."""
        line = Text()
        line.append("you ", style="bold")
        line.append_text(meter(self.last.input_level if self.last else 0.0))
        if self.heads > TurnDetector.HEAD:
            p = self.turn_end
            line.append("   turn ", style="bold")
            line.append("ended" if p > 0.5 else "going on", style="dim" if p > 0.5 else "green")
            line.append(f" (end-of-turn {p:.2f})", style="dim")
        else:
            line.append("   (no end-of-turn head in this model)", style="dim")
        line.append("   Ctrl-C to stop", style="dim")
        return line

    def render(self, console: Console) -> Any:
        with self.screen.lock:
            pieces = list(self.screen.segments)
        words, line_start = Text(), True
        for piece in pieces:
            if piece == "\n":
                if not line_start:  # a turn with words in it
                    words.append(f" {TURN_MARK}", style="black on cyan")
                    words.append("\n")
                    line_start = True
            elif text := (piece.lstrip() if line_start else piece):
                words.append(text)
                line_start = False
        if not pieces:
            words.append("(listening: your words appear here, the model's delay after you say them)", style="dim")
        width, height = console.size
        status, voice = pack(self.status_fields(), width), self.voice()
        below = len(status.wrap(console, width)) + len(voice.wrap(console, width)) + 1
        lines = list(words.wrap(console, width))[-max(3, height - below):]
        return Group(Text("\n").join(lines), Text(""), voice, status)


def listen(args: argparse.Namespace) -> None:
    outputs = {"--out": args.out, "--transcript": args.transcript}
    check_outputs(outputs, model_inputs(args))
    plain = args.plain or not sys.stdout.isatty()
    say = Console(stderr=True, highlight=False, soft_wrap=True)
    input_device = find_device(args.input_device, "input")
    files = resolve_stt_files(args)
    check_outputs(outputs, model_inputs(args, files))
    settings = SttSettings.of(files.config, args.vad, config_source(args, files))
    check_model_files(files, "transcribe")
    settings = dataclasses.replace(settings, timing=Timing(settings.timing.delay_s))  # no silence before a microphone
    pipeline = load_stt(args, files)
    model = model_label(args, files)
    # The outputs are opened only now: a model that fails to load leaves earlier files as they were.
    out = AtomicFile(args.out) if args.out else None
    transcript = Transcript(args.transcript) if args.transcript else None
    screen = ScreenText()
    terminal: Writer | None = None
    if plain:
        terminal = TimedWordsWriter(sys.stdout) if args.timestamps else TextWriter(sys.stdout)
    about = {"source": "microphone", "model": model, "audio_delay_s": settings.timing.delay_s}
    writers: list[Writer] = [screen] + ([make_writer(args.format, out.file, args.timestamps, about)] if out else [])
    session = Session(settings, Fanout(writers), args.vad, transcript=transcript)
    view = LiveView(model, session, screen, settings.heads)
    failure: Exception | None = None
    engine = Engine(pipeline, devices=AudioDevices(input_device, speaker=False), max_backlog=args.max_backlog,
                    on_event=view.on_event, tail_frames=settings.timing.delay_frames + 1)
    try:
        try:
            with nullcontext() if plain else say.status("Warming up...", spinner="dots"):
                engine.start()
            view.start()
            say.print(f"Listening ({model}): words come {settings.timing.delay_s:.1f} s after they are said. "
                      "Ctrl-C to stop.")
            _show(engine, view, screen, terminal, Console())
        finally:
            try:
                stats = engine.stop()  # the model's delay in silence first: the last words come out
            except (MoshiError, KeyboardInterrupt):
                raise
            except Exception as e:  # the transcription failed: what it made is kept, then one line
                failure, stats = e, engine.stats()
        session.finish()
        if terminal is not None:
            _replay(screen.take(), terminal)
            terminal.close()
        if out is not None:
            out.commit()
    finally:
        if out is not None:
            out.discard()
        if transcript is not None:
            transcript.close()
        pipeline.close()
    say.print(f"Stopped after {clock(view.elapsed)}: {stats.processed} frames, {stats.dropped} skipped to keep up; "
              f"{session.words.words} words.")
    if args.transcript:
        say.print(f"Transcript: {args.transcript} ({transcript.count if transcript else 0} lines)")
    if args.out:
        say.print(f"Wrote {args.out} ({args.format})")
    if failure is not None:
        raise Failed(f"the transcription stopped after {clock(view.elapsed)}", failure) from failure


def _show(engine: Engine, view: LiveView, screen: ScreenText, terminal: Writer | None, console: Console) -> None:
    """Until Ctrl-C (or the engine stops on an error): the live screen, or the words as plain text."""
    show_until_stopped(engine, console, view.render,
                       None if terminal is None else lambda: _replay(screen.take(), terminal))


def _replay(calls: list[tuple[str, Any]], writer: Writer) -> None:
    for kind, value in calls:
        if kind == "text":
            writer.text(value)
        elif kind == "word":
            writer.word(value)
        else:
            writer.end_of_turn(value)

