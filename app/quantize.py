"""`moshi-mlx quantize`: Kyutai's bf16 weights to a 4-bit, 8-bit or mixed-precision checkpoint, and how good it is."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from moshi_mlx.quantize.quantizer import InputTensor, output_paths, plan_layout, quantize_checkpoint
from moshi_mlx.quantize.recipes import GROUP_SIZES, RECIPES, describe, file_tag, make_plan
from moshi_mlx.quantize.report import format_size, quality_reports, random_codes, render_table, wav_codes, write_json
from moshi_mlx.quantize.safetensors_stream import SafetensorsReader
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from moshi_mlx import FRAME_SIZE, LmConfig, MoshiError, hub, read_mono_24k
from moshi_mlx.devtools.process_memory import peak_rss_bytes
from moshi_mlx.model.persona_layout import checkpoint_preset, is_model_config

from .checks import check_output_folder, check_outputs
from .interrupt import interrupt_on_termination
from .memory import GIB, total_memory_gib
from .parser import Parser, non_negative_int, seed

DEFAULT_INPUT = "kyutai/moshiko-pytorch-bf16"
BF16_FILE = "model.safetensors"
REPORT_FILE = "quality_report.json"
DEFAULT_STEPS = 64
BATCH = 4  # sequences of random codes scored at once
ORDER = {"model.q4.safetensors": 0, "model.q8.safetensors": 1, "model.mixed.safetensors": 2}


def build_parser() -> Parser:
    parser = Parser(
        prog="moshi-mlx quantize",
        description="Quantize Moshi's bf16 weights (Kyutai's PyTorch or MLX names) to 4 or 8 bits, or to a mixed "
        "precision, streaming tensor by tensor: the 7B fits in 16 GB. Writes model.<q4|q8|mixed>.safetensors and "
        "config.json, which load with `--moshi-weights` and `--config` alone (no quantization flag), then "
        "compares the result with bf16 on teacher-forced logits.",
    )
    parser.add_argument(
        "input", nargs="?", default=DEFAULT_INPUT,
        help=f"bf16 weights: a .safetensors file, a folder with {BF16_FILE}, or a Hugging Face repo "
        f"(default {DEFAULT_INPUT})",
    )
    parser.add_argument("-o", "--output", default=None, help="output folder (default ./moshi-<q4|q8|mixed>)")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=None, help="bits per weight (default 4)")
    parser.add_argument(
        "--group-size", type=int, choices=GROUP_SIZES, default=None,
        help="weights sharing one scale and bias (default Kyutai's: 32 for 4 bits, 64 for 8 bits)",
    )
    parser.add_argument(
        "--recipe", choices=RECIPES, default="uniform",
        help="uniform: every Linear and Embedding at --bits, as Kyutai's files; mixed: the temporal transformer's "
        "MLPs at 4 bits, everything else at 8 (5.8 GiB for the 7B, between q4's 4.5 and q8's 7.6)",
    )
    parser.add_argument("--config", default=None, help="model config.json (default: the input's, else the 7B)")
    report = parser.add_argument_group("quality report")
    report.add_argument("--report", action="store_true",
                        help="only report: compare the checkpoints already in --output with the input")
    report.add_argument("--no-report", action="store_true", help="quantize without the report")
    report.add_argument("--steps", type=non_negative_int, default=None,
                        help=f"frames of codes to score (default {DEFAULT_STEPS}; at most what memory allows)")
    report.add_argument("--seed", type=seed, default=None, help="seed of the random codes (default 0)")
    report.add_argument("--wav", default=None, help="score the Mimi codes of this recording instead of random ones")
    report.add_argument("--mimi-weights", default=None, help="Mimi weights for --wav (default: from the hub)")
    report.add_argument("--report-json", default=None,
                        help=f"where to write the report (default <output>/{REPORT_FILE})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    interrupt_on_termination()  # kill: the unfinished .partial file is removed, as on Ctrl-C
    check_options(args)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 110  # the report's table unwrapped in a log file
    # Every option is checked before the first tensor is read: the input and its config, the plan, the output
    # folder and every file written, the report's recording and its size in memory.
    weights, config, config_path = resolve_input(args.input, args.config)
    plan = make_plan(config, args.bits or 4, args.group_size, args.recipe)
    if all(spec is None for spec in plan.values()):
        raise MoshiError("nothing to quantize: no module of this model has rows that split into groups of "
                         f"{args.group_size or 'the default size'}; use a smaller --group-size")
    with SafetensorsReader(weights) as reader:  # the header alone: dtypes, names and shapes against the config
        plan_layout({n: InputTensor(t.shape, t.dtype) for n, t in reader.tensors.items()}, config, plan)
    output = check_output_folder("-o", args.output or f"moshi-{file_tag(plan)}")
    weights_path, new_config = output_paths(output, plan)
    if args.report:
        found = sorted(output.glob("model.*.safetensors"), key=lambda p: (ORDER.get(p.name, len(ORDER)), p.name))
        candidates = {p.name.split(".")[1]: p for p in found}
        if not candidates:
            raise MoshiError(f"no model.*.safetensors in {output} to report on: quantize first")
    inputs = {"the input checkpoint": weights, "--config": config_path, "--wav": args.wav,
              "--mimi-weights": args.mimi_weights}
    planned = {} if args.report else {"the quantized model": weights_path, "its config.json": new_config}
    if args.report:
        inputs.update({f"the {name} checkpoint being reported on": path for name, path in candidates.items()})
    report_json = None if args.no_report else Path(args.report_json or output / REPORT_FILE).expanduser()
    if report_json is not None and args.report_json is None:
        planned["the quality report"] = report_json
    check_outputs({"--report-json": args.report_json} if args.report_json else {}, inputs, planned=planned)
    source = None if args.no_report else _prepare_report(args, config, weights)

    if not args.report:
        candidates = {describe(plan): quantize(weights, output, config, plan, console)}
    if source is None or not _report_fits(weights, console):
        return
    codes = _codes(args, config, source)
    reports = quality_reports(weights, candidates, config, codes)
    console.print(render_table(reports, title=f"Quality against bf16 ({_codes_source(args, codes)})"))
    path = write_json(reports, report_json, input=str(weights), codes=_codes_source(args, codes))
    console.print(f"report written to {path}")


def check_options(args: argparse.Namespace) -> None:
    """The options that need no file: how they combine, and their ranges."""
    if args.report and args.no_report:
        raise MoshiError("--report and --no-report exclude each other")
    if args.recipe == "mixed" and args.bits is not None:
        raise MoshiError("--recipe mixed sets its own bits per module: drop --bits")
    if args.no_report:
        given = [option for option, value in (("--steps", args.steps), ("--seed", args.seed), ("--wav", args.wav),
                 ("--mimi-weights", args.mimi_weights), ("--report-json", args.report_json)) if value is not None]
        if given:
            raise MoshiError(f"{given[0]} is for the quality report, which --no-report skips: drop one of them")
    if args.mimi_weights is not None and args.wav is None:
        raise MoshiError("--mimi-weights encodes --wav: give --wav too, or drop --mimi-weights")
    if args.wav is not None and args.seed is not None:
        raise MoshiError("--seed draws random codes, --wav replaces them: drop one of them")
    if args.steps is not None and args.steps < 2:
        raise MoshiError("--steps must be at least 2")


def max_report_steps(config: LmConfig, weights_bytes: int, total_bytes: float) -> int:
    """The most frames the report can score in `total_bytes` of memory: the bf16 model, both models' logits
    (float32, kept for the comparison, float64 while compared) and the attention scores over the frames."""
    per_step = BATCH * (config.text_card + config.dep_q * config.card) * 4 * 6
    lo, hi = 0, 1 << 40
    while lo < hi:
        steps = (lo + hi + 1) // 2
        window = min(steps, config.context or steps)
        attention = BATCH * config.num_heads * steps * window * 4 * 2
        if weights_bytes + steps * per_step + attention <= total_bytes:
            lo = steps
        else:
            hi = steps - 1
    return lo


def _prepare_report(args: argparse.Namespace, config: LmConfig, weights: Path) -> np.ndarray | str:
    """The report's source, checked now: the recording (read, so a damaged file fails before quantizing) with its
    Mimi weights, or random codes; --steps within what memory allows."""
    steps, total = args.steps or DEFAULT_STEPS, total_memory_gib()
    if weights.stat().st_size / GIB + 2.0 <= total:  # else the report is skipped after quantizing, with a hint
        limit = max_report_steps(config, weights.stat().st_size, total * GIB)
        if steps > limit:
            raise MoshiError(f"--steps {steps} does not fit in {total:.1f} GiB of memory for the report: use at most "
                             f"{limit}" if limit >= 2 else
                             f"the report does not fit in {total:.1f} GiB of memory: use --no-report")
    if args.wav is None:
        return "random"
    pcm = read_mono_24k(args.wav)
    if len(pcm) < 2 * FRAME_SIZE:
        raise MoshiError(f"--wav {args.wav} is shorter than two 80 ms frames")
    if args.mimi_weights is not None:
        hub._local(args.mimi_weights, "Mimi weights")
    else:
        args.mimi_weights = hub.fetch(hub.default_repo("moshiko", "q8"), hub.MIMI_FILE, "q8")
    return pcm


def resolve_input(spec: str, config: str | None) -> tuple[Path, LmConfig, Path | None]:
    """The bf16 weights file, its model config and the config's file (None for the 7B preset), from a file, a
    folder or a Hugging Face repo."""
    path = Path(spec).expanduser()
    repo_config = None
    if path.is_dir():
        weights = path / BF16_FILE
        if not weights.is_file():
            raise MoshiError(f"{path} has no {BF16_FILE}: give the bf16 weights file itself")
    elif path.is_file():
        weights = path
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.endswith(".safetensors"):
        repo_config = hub._repo_config(spec)
        weights = hub.fetch(spec, (repo_config or {}).get("moshi_name") or BF16_FILE, "bf16")
    else:
        raise MoshiError(f"input not found: {spec} (a .safetensors file, a folder, or a Hugging Face repo)")
    if config is not None:
        return weights, LmConfig.from_json(hub._local(config, "model config")), Path(config)
    if is_model_config(repo_config):
        return weights, LmConfig.from_dict(repo_config), None
    sibling = _sibling_config(weights)
    if sibling is not None:
        return weights, LmConfig.from_json(sibling), sibling
    # No model config (NVIDIA's PersonaPlex repos ship a config.json that is not one): the tensors tell.
    return weights, checkpoint_preset(weights), None


def _sibling_config(weights: Path) -> Path | None:
    """The config.json beside the weights, unless there is none or it is not a model config."""
    sibling = weights.parent / "config.json"
    try:
        return sibling if is_model_config(json.loads(sibling.read_text())) else None
    except ValueError:
        return sibling  # not JSON: LmConfig.from_json says so in one line
    except OSError:
        return None


def quantize(weights: Path, output: Path, config: LmConfig, plan: dict, console: Console) -> Path:
    """Quantize with a progress bar; prints what was written and the peak memory."""
    kept = sorted(p for p, s in plan.items() if s is None)
    if kept:
        why = "the recipe keeps them, as Kyutai's run_tts does, or their rows do not split into groups" \
            if config.tts_config is not None else "their rows do not split into groups"
        console.print(f"[yellow]{len(kept)} modules stay bf16: {why} (e.g. {kept[0]})[/yellow]")
    weights_path, _ = output_paths(output, plan)
    with SafetensorsReader(weights) as reader:
        total = reader.total_bytes()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("[dim]{task.fields[tensor]}"))
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{describe(plan)} {weights.name}", total=total, tensor="")
        result = quantize_checkpoint(
            weights, output, config, plan,
            progress=lambda name, n: progress.update(task, advance=n, tensor=name),
        )
        progress.update(task, tensor="")
    elapsed = time.perf_counter() - start
    console.print(
        f"wrote {result.weights} ({format_size(result.output_bytes)}, {result.bits_per_weight:.2f} bits per "
        f"weight) and {result.config.name} from {format_size(result.input_bytes)} in {elapsed:.0f} s; "
        f"peak memory {format_size(peak_rss_bytes())}"
    )
    command = "say" if config.tts_config is not None else "transcribe" if config.model_type == "stt" else "chat"
    console.print(f"use it: moshi-mlx {command} --moshi-weights {weights_path} --config {result.config}")
    return weights_path


def _report_fits(weights: Path, console: Console) -> bool:
    """The report runs the bf16 model: skip it, with a hint, where that cannot fit in memory."""
    need = weights.stat().st_size / GIB + 2.0
    total = total_memory_gib()
    if need <= total:
        return True
    console.print(f"skipping the quality report: the bf16 model needs about {need:.1f} GiB and this machine has "
                  f"{total:.1f} GiB (`--report` on a larger machine)")
    return False


def _codes(args: argparse.Namespace, config: LmConfig, source: np.ndarray | str):
    steps = args.steps or DEFAULT_STEPS
    if isinstance(source, str):
        return random_codes(config, steps, batch=BATCH, seed=args.seed or 0)
    return wav_codes(source, args.mimi_weights, config, max_steps=steps)


def _codes_source(args: argparse.Namespace, codes) -> str:
    batch, _, steps = codes.shape
    if args.wav is None:
        return f"random codes, {batch} x {steps} frames, seed {args.seed or 0}"
    return f"Mimi codes of {Path(args.wav).name}, {steps} frames"
