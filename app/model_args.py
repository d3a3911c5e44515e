"""Options shared by the subcommands that run Moshi (`chat`, `run`): which model, how it samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moshi_mlx import hub
from moshi_mlx.codec import BACKENDS, choose_backend
from moshi_mlx.model.text import check_vocabulary
from moshi_mlx.model.weights import summarize_quantization
from moshi_mlx.stream.pipeline import Pipeline, load_text_tokenizer

from .memory import check_fits, choose_quant
from .parser import repo_id, seed, temperature


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--voice", choices=hub.VOICES, default="moshiko", help="moshiko (male) or moshika (female)")
    group.add_argument(
        "-q", "--quantize", "--quant", dest="quant", choices=["4", "8", "bf16"], default=None,
        help="weights precision (default: the one --hf-repo holds, else the best that fits this machine's memory)",
    )
    group.add_argument("--hf-repo", type=repo_id, default=None,
                        help="Hugging Face repo (default: kyutai/<voice>-mlx-<q>)")
    group.add_argument("--moshi-weights", default=None, help="local Moshi weights (.safetensors, MLX or PyTorch names)")
    group.add_argument("--mimi-weights", default=None, help="local Mimi weights (.safetensors)")
    group.add_argument("--tokenizer", default=None, help="local text tokenizer (SentencePiece .model)")
    group.add_argument("--config", default=None, help="local model config.json (default: the repo's, else the 7B)")
    group.add_argument(
        "--mimi", choices=BACKENDS, default="auto",
        help="audio codec: mlx (ours, on MLX's device), rust (rustymimi, on the CPU) or auto (mlx on a GPU, "
        "else rust when rustymimi is installed)",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--seed", type=seed, default=None, help="random seed: the same input gives the same output")
    group.add_argument("--temp", type=temperature, default=0.8, help="audio sampling temperature (0 = greedy)")
    group.add_argument("--temp-text", type=temperature, default=0.7, help="text sampling temperature (0 = greedy)")


def resolve_files(args: argparse.Namespace) -> hub.ModelFiles:
    """The model files the options name: local paths win, the rest from the Hugging Face repo (or its cache)."""
    local = args.moshi_weights and args.mimi_weights and args.tokenizer
    if args.quant:
        quant = hub.normalize_quant(args.quant)
    elif local:
        quant = "q4"
    else:
        quant = (args.hf_repo and hub.repo_quant(args.hf_repo)) or choose_quant()[0]
    if args.moshi_weights is None:
        check_fits(quant)  # before anything is downloaded
    files = hub.resolve_files(
        hf_repo=args.hf_repo, voice=args.voice, quant=quant, moshi_weights=args.moshi_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer, config=args.config,
    )
    check_fits(files.quant, files.moshi_weights)
    return files


def model_inputs(args: argparse.Namespace, files: hub.ModelFiles | None = None) -> dict[str, str | Path | None]:
    """The files the model options read (by option, then as resolved from the hub), for `check_outputs`."""
    inputs: dict[str, str | Path | None] = {
        "--moshi-weights": args.moshi_weights, "--mimi-weights": args.mimi_weights, "--tokenizer": args.tokenizer,
        "--config": args.config,
    }
    if files is not None:
        inputs.update({"the Moshi weights": files.moshi_weights, "the Mimi weights": files.mimi_weights,
                       "the text tokenizer": files.tokenizer})
    return inputs


def check_model_files(files: hub.ModelFiles) -> None:
    """What can be checked before the slow loading: the tokenizer against the model's text vocabulary (the
    config's types and ranges are checked as it is read; the weights' dtypes and values as they load)."""
    check_vocabulary(load_text_tokenizer(files.tokenizer), files.config, files.tokenizer)


def codec_line(backend: str, why: str) -> str:
    """The line said at start: which Mimi backend runs and why."""
    return f"Mimi codec: {'MLX Mimi' if backend == 'mlx' else 'rustymimi'} ({why})"


def load_files(args: argparse.Namespace, files: hub.ModelFiles) -> Pipeline:
    """Load the pipeline and say which Mimi backend runs (on stderr)."""
    mimi, why = choose_backend(args.mimi)
    pipeline = Pipeline.load(
        files.moshi_weights, files.mimi_weights, files.tokenizer, files.config,
        seed=args.seed, temp=args.temp, temp_text=args.temp_text, mimi=mimi,
    )
    print(codec_line(mimi, why), file=sys.stderr)
    return pipeline


def quantization_note(args: argparse.Namespace, pipeline: Pipeline) -> str | None:
    """One line when -q asked for another precision than the local weights file holds (it is used as it is)."""
    if args.quant is None or args.moshi_weights is None:
        return None
    held = summarize_quantization(pipeline.gen.lm.quantization)
    if held == hub.normalize_quant(args.quant):
        return None
    return (f"note: -q {args.quant} does not apply to --moshi-weights {Path(args.moshi_weights).name}: it holds "
            f"{held} weights, used as they are")


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """Moshi, Mimi and the text tokenizer as the model and sampling options say."""
    files = resolve_files(args)
    check_model_files(files)
    return load_files(args, files)
