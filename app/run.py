"""`moshi-mlx run`: Moshi over an audio file; its voice to a WAV, its words to a transcript."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE, FrameEvent, MoshiError, read_mono_24k, run_file
from moshi_mlx.codec import FRAME_MS
from moshi_mlx.stream.latency import LatencyMeter, loop_sample

from .checks import check_outputs
from .failure import Failed
from .interrupt import interrupt_on_termination
from .model_args import (
    add_model_args,
    add_sampling_args,
    check_model_files,
    load_files,
    model_inputs,
    resolve_files,
)
from .parser import Parser
from .persona_args import (
    add_persona_args,
    check_request,
    feed_persona,
    make_persona,
    note_licence,
    read_request,
    settle_model,
)


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
    parser.add_argument("--simulate-echo", type=echo_spec, default=None, metavar="DELAY_MS[:GAIN_DB]",
                        help="mix Moshi's voice back into its input DELAY_MS after it played, at GAIN_DB (default "
                        "-6), then cancel it as `chat` does; --stereo's left channel is what Moshi heard")
    parser.add_argument("--aec", choices=("on", "off"), default="on",
                        help="echo cancellation of --simulate-echo (default on)")
    parser.add_argument("--report-latency", action="store_true",
                        help="say the compute-and-queue part of the latency (what a file can measure: a live "
                        "conversation adds the model's 160 ms and the devices' buffering)")
    add_model_args(parser)
    add_persona_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)

    interrupt_on_termination()
    # Everything that can be checked is, before the model loads and before an output is opened (an existing
    # --out or --transcript is kept if anything is wrong): the input, the output paths, then the model's files.
    audio = read_mono_24k(args.input)
    outputs = {"--out": args.out, "--transcript": args.transcript}
    check_outputs(outputs, model_inputs(args), source=args.input)
    request = check_request(args, read_request(args), known := settle_model(args))
    files = resolve_files(args)
    check_outputs(outputs, model_inputs(args, files), source=args.input)
    check_model_files(files, "run")
    persona = make_persona(args, request, files, known)
    note_licence(known)
    pipeline = load_files(args, files)
    feed_persona(pipeline, persona)

    frames_done, printed = 0, False
    latency = LatencyMeter()

    def show(event: FrameEvent) -> None:
        nonlocal frames_done, printed
        frames_done = event.index + 1
        if args.report_latency and event.index > 0 and event.times is not None:
            latency.add(loop_sample(event.times))
        if event.notice:
            if printed:
                sys.stdout.write("\n")
                sys.stdout.flush()
            print(f"note: {event.notice}", file=sys.stderr)
        if event.text and not args.quiet:
            sys.stdout.write(event.text if printed else event.text.lstrip())
            sys.stdout.flush()
            printed = True

    def held() -> str:
        files = [path for path in (args.out, args.transcript) if path]
        return (f"{' and '.join(files)} {'hold' if len(files) > 1 else 'holds'} the first "
                f"{frames_done * FRAME_SIZE / SAMPLE_RATE:.1f} s of {len(audio) / SAMPLE_RATE:.1f} s")

    start = time.perf_counter()
    try:
        if args.simulate_echo is None:
            result = run_file(pipeline, audio, args.out, args.transcript, stereo=args.stereo, on_event=show)
        else:
            from moshi_mlx.stream.echo.canceller import make_echo_canceller
            from moshi_mlx.stream.echo.simulator import run_file_with_echo

            canceller = make_echo_canceller(args.aec == "on")
            result = run_file_with_echo(pipeline, audio, args.out, *args.simulate_echo, canceller,
                                        args.transcript, stereo=args.stereo, on_event=show)
    except KeyboardInterrupt:
        if printed:
            sys.stdout.write("\n")
        print(f"interrupted: {held()}", file=sys.stderr)
        sys.exit(130)
    except MoshiError:
        raise
    except Exception as e:
        if printed:
            sys.stdout.write("\n")
        raise Failed(f"the run stopped at frame {frames_done} ({held()})", e) from e
    finally:
        pipeline.close()
    elapsed = time.perf_counter() - start
    if printed:
        sys.stdout.write("\n")
    print(
        f"wrote {args.out}: {result.seconds:.1f} s, {result.frames} frames in {elapsed:.1f} s "
        f"({result.seconds / elapsed:.2f}x real time)",
        file=sys.stderr,
    )
    if args.simulate_echo is not None:
        print(echo_report(args.simulate_echo, result), file=sys.stderr)
    if args.report_latency:
        print(f"latency, compute and queues: {latency.summary().describe()}; live, add the model's "
              f"{2 * FRAME_MS:.0f} ms and the devices' buffering", file=sys.stderr)


def echo_spec(text: str) -> tuple[float, float]:
    from moshi_mlx.stream.echo.simulator import parse_echo_spec

    try:
        return parse_echo_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def echo_report(spec: tuple[float, float], result: Any) -> str:
    delay, gain = spec
    line = f"echo: Moshi's voice mixed back in {delay:g} ms later at {gain:+g} dB; "
    if result.echo_removed_db is None:
        return line + "no 0.5 s window where the echo outweighed the input, nothing to measure"
    line += f"{result.echo_removed_db:.1f} dB removed (median over the 0.5 s windows where it outweighed the input)"
    if result.lead_ms is not None:
        back = f", held back {result.hold_ms:.0f} ms" if result.hold_ms else ""
        line += f"; reference lead {result.lead_ms:.0f} ms{back}"
    return line

