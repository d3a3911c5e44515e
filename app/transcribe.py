"""`moshi-mlx transcribe`: Kyutai's streaming speech-to-text over an audio file, or live from the microphone."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from moshi_mlx import MoshiError
from moshi_mlx.stream.audio_file import open_audio
from moshi_mlx.stream.frame_loop import run_frame_loop
from moshi_mlx.stream.stt_file import padded_frames
from moshi_mlx.stream.words import TurnDetector, WordAssembler

from .atomic import AtomicFile
from .checks import check_outputs
from .failure import Failed
from .interrupt import interrupt_on_termination
from .model_args import check_model_files, model_inputs
from .parser import Parser, non_negative_int
from .stt_args import SttSettings, add_stt_model_args, config_source, load_stt, model_label, resolve_stt_files
from .transcribe_formats import FORMATS, Fanout, TextWriter, TimedWordsWriter, Writer, make_writer
from .transcript import Transcript


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="moshi-mlx transcribe",
        description="Kyutai's streaming speech-to-text: the words of an audio file (any format and rate `run` "
        "takes), or live from the microphone when no file is given (Ctrl-C to stop). Words are printed as the "
        "model decides them, its delay after they are said.",
    )
    parser.add_argument("input", nargs="?", default=None, metavar="FILE",
                        help="audio file to transcribe (WAV, FLAC, OGG...); none: the microphone")
    parser.add_argument("-o", "--out", default=None, metavar="FILE",
                        help="write the transcript in --format to FILE (in full when done or stopped; an earlier "
                        "FILE is kept until then); the words still show on the terminal")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text (default), srt or vtt (subtitles), json (every word with its times)")
    parser.add_argument("--timestamps", action="store_true",
                        help="text: one word a line with its start and end, in seconds of the input")
    parser.add_argument("--vad", action="store_true",
                        help="mark where the speaker ended a turn (the model's voice-activity head; stt-1b)")
    parser.add_argument("--transcript", default=None, metavar="FILE",
                        help="write the words as timestamped lines, as `chat` does")
    parser.add_argument("--quiet", action="store_true", help="do not print the words (with -o or --transcript)")
    live = parser.add_argument_group("live (no FILE)")
    live.add_argument("--input-device", default=None, help="microphone: number or part of the name "
                      "(`moshi-mlx devices` lists them; default: the system's)")
    live.add_argument("--max-backlog", type=non_negative_int, default=2, metavar="FRAMES",
                      help="input frames allowed to wait before the oldest are skipped to keep up (default 2)")
    live.add_argument("--plain", action="store_true", help="plain lines instead of the live screen "
                      "(the default when stdout is not a terminal)")
    add_stt_model_args(parser)
    args = parser.parse_args(argv)
    if args.quiet and args.out is None and args.transcript is None and args.input is not None:
        parser.error("--quiet without -o or --transcript would write nothing: give -o FILE")
    return args


class Session:
    """One transcription: each frame's token made into words, and the ends of turn, sent to the writers."""

    def __init__(self, settings: SttSettings, writers: Writer, vad: bool, duration_s: float | None = None,
                 transcript: Transcript | None = None):
        self.words = WordAssembler(settings.timing, duration_s)
        self.turns = TurnDetector(settings.timing) if vad else None
        self.writers, self.transcript = writers, transcript
        self.duration_s = duration_s
        self.steps = 0

    def on_event(self, event: Any) -> None:
        self.steps = event.index + 1
        self._send(self.words.add(event.index, event.text_token, event.text))
        if self.turns is not None:
            self.turns.update(event.index, event.extra_heads)
            for moment in self.turns.due(event.index):
                self._turn(moment)

    def finish(self, complete: bool = True) -> None:
        """The input ended (or was stopped): the last word, the ends of turn still due, the writers closed."""
        self._send(self.words.finish())
        for moment in self.turns.flush() if self.turns is not None else []:
            self._turn(moment)
        self.writers.close(complete)
        if self.transcript is not None:
            self.transcript.close()

    def _send(self, update: Any) -> None:
        if update.text:
            self.writers.text(update.text)
        for word in update.words:
            self.writers.word(word)
            if self.transcript is not None:
                self.transcript.add(word.start, " " + word.text)

    def _turn(self, moment: float) -> None:
        self.writers.end_of_turn(moment if self.duration_s is None else min(moment, self.duration_s))
        if self.transcript is not None:
            self.transcript.finish()


def held(args: argparse.Namespace) -> str:
    """What an interrupted run says it kept."""
    written = [path for path in (args.out, args.transcript) if path]
    return f"{' and '.join(written)} {'hold' if len(written) > 1 else 'holds'}" if written else "transcribed"


def terminal_writer(args: argparse.Namespace, about: dict[str, Any]) -> Writer | None:
    """What the terminal shows: the --format itself without -o (for `> file`), else the words as text."""
    if args.quiet:
        return None
    if args.out is None:
        return make_writer(args.format, sys.stdout, args.timestamps, about)
    return TimedWordsWriter(sys.stdout) if args.timestamps else TextWriter(sys.stdout)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    interrupt_on_termination()
    if args.input is None:
        from .transcribe_live import listen

        listen(args)
    else:
        transcribe_file(args)


def transcribe_file(args: argparse.Namespace) -> None:
    # Everything that can be checked is, before the model loads and before -o is touched: the input, the output
    # path, the model's files, and the model being a speech-to-text one.
    audio = open_audio(args.input)
    outputs = {"--out": args.out, "--transcript": args.transcript}
    check_outputs(outputs, model_inputs(args), source=args.input)
    files = resolve_stt_files(args)
    check_outputs(outputs, model_inputs(args, files), source=args.input)
    settings = SttSettings.of(files.config, args.vad, config_source(args, files))
    check_model_files(files, "transcribe")
    # -o and --transcript are written to temporary files, renamed into place once the file is done (or stopped).
    out = AtomicFile(args.out) if args.out else None
    lines = AtomicFile(args.transcript) if args.transcript else None
    files_made = [f for f in (out, lines) if f is not None]
    try:
        pipeline = load_stt(args, files)
    except BaseException:
        for f in files_made:
            f.discard()
        raise
    about = {"source": str(args.input), "model": model_label(args, files), "duration_s": round(audio.seconds, 3),
             "audio_delay_s": settings.timing.delay_s}
    writers = [w for w in (terminal_writer(args, about),
                           make_writer(args.format, out.file, args.timestamps, about) if out else None) if w]
    session = Session(settings, Fanout(writers), args.vad, audio.seconds,
                      Transcript(lines.temp) if lines is not None else None)
    frames = padded_frames(audio.mono_24k(), files.config)

    def heard() -> str:
        seconds = max(0.0, min(audio.seconds, settings.timing.heard(session.steps)))
        return f"the first {seconds:.1f} s of {audio.seconds:.1f} s"

    start = time.perf_counter()
    try:
        run_frame_loop(pipeline, frames, lambda event, user, pcm: session.on_event(event))
        session.finish()
        for f in files_made:
            f.commit()
    except KeyboardInterrupt:
        session.finish(complete=False)
        for f in files_made:
            f.commit()
        print(f"interrupted: {held(args)} {heard()}", file=sys.stderr)
        sys.exit(130)
    except MoshiError:  # bad input found on the way (damaged samples): -o and --transcript are left as they were
        raise
    except Exception as e:  # a failure: what was transcribed is kept, then one line
        session.finish(complete=False)
        for f in files_made:
            f.commit()
        raise Failed(f"the transcription stopped ({held(args)} {heard()})", e) from e
    finally:
        for f in files_made:
            f.discard()  # nothing is left behind, and nothing replaced, unless committed above
        pipeline.close()
    elapsed = time.perf_counter() - start
    wrote = "".join(f"; wrote {path}" for path in (args.out, args.transcript) if path)
    print(f"transcribed {args.input}: {audio.seconds:.1f} s in {elapsed:.1f} s "
          f"({audio.seconds / max(elapsed, 1e-9):.2f}x real time), {session.words.words} words{wrote}",
          file=sys.stderr)
