"""`moshi-mlx run`: Moshi over an audio file; its voice to a WAV, its words to a transcript."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from moshi_mlx.audio_io import read_mono_24k
from moshi_mlx.errors import MoshiError
from moshi_mlx.filemode import run_file
from moshi_mlx.pipeline import FrameEvent

from .model_args import add_model_args, add_sampling_args, load_pipeline
from .parser import Parser


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="moshi-mlx run",
        description="Play an audio file to Moshi (any sample rate, any channels; mixed to mono 24 kHz) and "
        "write what it says: its voice as a 24 kHz WAV, its words as text. Frames run as fast as the machine "
        "allows; Moshi's voice is aligned with the input as in a live conversation.",
    )
    parser.add_argument("input", help="audio file to play to Moshi (WAV, FLAC, OGG...)")
    parser.add_argument("--out", required=True, help="WAV file for Moshi's voice")
    parser.add_argument("--transcript", default=None, help="text file for Moshi's words")
    parser.add_argument("--stereo", action="store_true", help="write the input on the left, Moshi on the right")
    parser.add_argument("--quiet", action="store_true", help="do not print Moshi's words as they come")
    add_model_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)

    audio = read_mono_24k(args.input)  # bad input and output paths fail before the model loads
    for path in (args.out, args.transcript):
        if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
            raise MoshiError(f"cannot write {path}: its folder does not exist")
    pipeline = load_pipeline(args)

    def show(event: FrameEvent) -> None:
        if event.text and not args.quiet:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    start = time.perf_counter()
    result = run_file(pipeline, audio, args.out, args.transcript, stereo=args.stereo, on_event=show)
    elapsed = time.perf_counter() - start
    if not args.quiet and result.text:
        sys.stdout.write("\n")
    print(
        f"wrote {args.out}: {result.seconds:.1f} s, {len(result.events)} frames in {elapsed:.1f} s "
        f"({result.seconds / elapsed:.2f}x real time)",
        file=sys.stderr,
    )
