"""`moshi-mlx chat` (and plain `moshi-mlx`): a live conversation with Moshi on the microphone and speaker."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console

from moshi_mlx import Engine, MoshiError, Pipeline, hub
from moshi_mlx.codec import FRAME_S, choose_backend
from moshi_mlx.model.weights import summarize_quantization
from moshi_mlx.stream.audio_io import find_device
from moshi_mlx.stream.engine import EngineStats
from moshi_mlx.stream.recording import WavRecorder

from .checks import check_outputs
from .failure import Failed
from .interrupt import interrupt_on_termination
from .memory import MEMORY_ENV, check_fits, choose_quant
from .model_args import (
    add_model_args,
    add_sampling_args,
    check_model_files,
    load_files,
    model_inputs,
    resolve_files,
)
from .parser import Parser, non_negative_int
from .persona_args import (
    add_persona_args,
    check_request,
    make_persona,
    note_licence,
    prefill_progress,
    read_request,
    settle_model,
)
from .transcript import Transcript
from .ui import ChatView, PlainOutput, clock, show_until_stopped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="moshi-mlx chat",
        description="Talk with Moshi: it listens and speaks at the same time. Its words show as it thinks them, "
        "with the levels and how well this machine keeps up. Ctrl-C ends the conversation. "
        f"The quantization is chosen from the machine's memory unless -q says ({MEMORY_ENV} overrides the "
        "measured memory, in GiB).",
    )
    parser.add_argument("--input-device", default=None, help="microphone: number or part of the name "
                        "(`moshi-mlx devices` lists them; default: the system's)")
    parser.add_argument("--output-device", default=None, help="speaker: number or part of the name")
    parser.add_argument("--transcript", default=None, metavar="FILE", help="write Moshi's words, timestamped")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="write the conversation as a stereo WAV (you left, Moshi right)")
    parser.add_argument("--max-backlog", type=non_negative_int, default=2, metavar="FRAMES",
                        help="input frames allowed to wait before the oldest are skipped to keep up (default 2)")
    parser.add_argument("--aec", choices=("on", "off"), default="on",
                        help="echo cancellation, so that Moshi does not hear itself on the speakers (default on)")
    parser.add_argument("--plain", action="store_true", help="plain lines instead of the live screen "
                        "(the default when stdout is not a terminal)")
    add_model_args(parser)
    add_persona_args(parser)
    add_sampling_args(parser)
    return parser.parse_args(argv)


def choose_model(args: argparse.Namespace, say: Console) -> hub.ModelFiles:
    """Settle the quantization (saying which and why), check it fits, then find the files."""
    local = args.moshi_weights is not None
    if args.quant is None and args.hf_repo is not None and not local:
        held = hub.repo_quant(args.hf_repo)  # the repo's own precision, not one it may not have
        args.quant = held.removeprefix("q") if held else None
    if args.quant is not None and not local:
        check_fits(hub.normalize_quant(args.quant))  # before downloading anything
    elif args.quant is None and not local:
        quant, why = choose_quant()
        args.quant = quant.removeprefix("q")
        say.print(f"Using {why}")
    return resolve_files(args)


def model_label(args: argparse.Namespace, files: hub.ModelFiles, pipeline: Pipeline) -> str:
    quant = summarize_quantization(pipeline.gen.lm.quantization)
    if args.moshi_weights is not None:
        return f"{Path(args.moshi_weights).name} {quant}"
    name = (args.model if args.model not in (None, "moshi") else (args.voice or "moshiko") if args.hf_repo is None
            else files.repo)
    return f"{name} {quant}"


def converse(engine: Engine, view: ChatView, output: PlainOutput | None, console: Console) -> None:
    """Until Ctrl-C (or the engine stops on an error): the live screen, or plain lines when `output` is given."""
    show_until_stopped(engine, console, view.render, None if output is None else output.update)


def devices_line(stats: EngineStats) -> str:
    """The sound devices' own buffering, as PortAudio reports it (asked for as low as they go)."""
    return (f"Audio: microphone {stats.input_latency_ms:.0f} ms, speaker {stats.output_latency_ms:.0f} ms of device "
            "latency (the lowest the devices offer)")


def summary(stats: EngineStats, view: ChatView, args: argparse.Namespace) -> list[str]:
    lines = [
        f"Stopped after {clock(view.elapsed)}: {stats.processed} frames, {stats.dropped} skipped to keep up, "
        f"{stats.underruns} underruns."
    ]
    lines.append(f"Latency, mouth to ear: {stats.latency.describe()}.")
    if args.transcript:
        lines.append(f"Transcript: {args.transcript} ({view.transcript.count} lines)")
    if args.record:
        lines.append(f"Recording: {args.record} ({stats.processed * FRAME_S:.1f} s as Moshi heard it, skips left out; "
                     "stereo: you left, Moshi right)")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    interrupt_on_termination()
    outputs = {"--transcript": args.transcript, "--record": args.record}
    check_outputs(outputs, model_inputs(args))
    plain = args.plain or not sys.stdout.isatty()
    console = Console()
    say = Console(stderr=True, highlight=False, soft_wrap=True)

    # The quick checks first: devices, memory, files; then the slow loading.
    input_device = find_device(args.input_device, "input")
    output_device = find_device(args.output_device, "output")
    request = read_request(args)
    known = settle_model(args)
    request = check_request(args, request, known)
    files = choose_model(args, say)
    choose_backend(args.mimi)  # --mimi rust without rustymimi fails here, before the files are read
    check_outputs(outputs, model_inputs(args, files))
    check_model_files(files)
    persona = make_persona(args, request, files, known)
    note_licence(known)
    pipeline = load_files(args, files, nullcontext() if plain else say.status("Loading Moshi...", spinner="dots"))
    pipeline.persona = persona
    # The outputs are opened only now: a model that fails to load leaves an existing transcript or recording.
    transcript = Transcript(args.transcript)
    recorder = WavRecorder(args.record, stereo=True) if args.record else None
    failure: Exception | None = None
    try:
        view = ChatView(model_label(args, files, pipeline), transcript,
                        persona.describe(width=400) if persona else None)  # the screen's width cuts it
        output = None
        engine = Engine(pipeline, input_device, output_device, max_backlog=args.max_backlog,
                        on_event=view.on_event, recorder=recorder, aec=args.aec == "on")
        try:
            with nullcontext() if plain else say.status("Warming up...", spinner="dots") as status:
                engine.on_prefill = prefill_progress(status)
                engine.start()
            view.start()
            if engine.prefill_report is not None:
                say.print(engine.prefill_report.describe())
            say.print(devices_line(engine.stats()))
            say.print(f"Talking to {'PersonaPlex' if persona else 'Moshi'} ({view.model}). Ctrl-C to stop.")
            output = PlainOutput(view, sys.stdout) if plain else None
            converse(engine, view, output, console)
        finally:
            try:
                stats = engine.stop()  # closes the streams and the recording, even on Ctrl-C or an error
            except (MoshiError, KeyboardInterrupt):
                raise
            except Exception as e:  # the conversation failed: what it made is kept, then one line
                failure, stats = e, engine.stats()
        if output is not None:
            output.finish()
    finally:
        transcript.close()
        if recorder is not None:
            recorder.close()
        pipeline.close()
    for line in summary(stats, view, args):
        say.print(line)
    if failure is not None:
        raise Failed(f"the conversation stopped after {clock(view.elapsed)}", failure) from failure
