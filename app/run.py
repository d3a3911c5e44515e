"""`moshi-mlx run`: Moshi over an audio file; its voice to a WAV, its words to a transcript."""

from __future__ import annotations

import sys
import time

from moshi_mlx.audio_io import read_mono_24k
from moshi_mlx.codec import FRAME_SIZE, SAMPLE_RATE
from moshi_mlx.filemode import run_file
from moshi_mlx.pipeline import FrameEvent

from .checks import check_outputs
from .interrupt import interrupt_on_termination
from .model_args import (
    add_model_args,
    add_sampling_args,
    check_model_files,
    load_files,
    model_inputs,
    quantization_note,
    resolve_files,
)
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

    interrupt_on_termination()
    # Everything that can be checked is, before the model loads and before an output is opened (an existing
    # --out or --transcript is kept if anything is wrong): the input, the output paths, then the model's files.
    audio = read_mono_24k(args.input)
    outputs = {"--out": args.out, "--transcript": args.transcript}
    check_outputs(outputs, model_inputs(args), source=args.input)
    files = resolve_files(args)
    check_outputs(outputs, model_inputs(args, files), source=args.input)
    check_model_files(files)
    pipeline = load_files(args, files)
    if note := quantization_note(args, pipeline):
        print(note, file=sys.stderr)

    frames_done, printed = 0, False

    def show(event: FrameEvent) -> None:
        nonlocal frames_done, printed
        frames_done = event.index + 1
        if event.text and not args.quiet:
            sys.stdout.write(event.text if printed else event.text.lstrip())
            sys.stdout.flush()
            printed = True

    start = time.perf_counter()
    try:
        result = run_file(pipeline, audio, args.out, args.transcript, stereo=args.stereo, on_event=show)
    except KeyboardInterrupt:
        if printed:
            sys.stdout.write("\n")
        files = [path for path in (args.out, args.transcript) if path]
        print(f"interrupted: {' and '.join(files)} {'hold' if len(files) > 1 else 'holds'} the first "
              f"{frames_done * FRAME_SIZE / SAMPLE_RATE:.1f} s of {len(audio) / SAMPLE_RATE:.1f} s",
              file=sys.stderr)
        sys.exit(130)
    elapsed = time.perf_counter() - start
    if printed:
        sys.stdout.write("\n")
    print(
        f"wrote {args.out}: {result.seconds:.1f} s, {len(result.events)} frames in {elapsed:.1f} s "
        f"({result.seconds / elapsed:.2f}x real time)",
        file=sys.stderr,
    )

