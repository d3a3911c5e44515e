"""Options shared by the subcommands that run Moshi (`chat`, `run`): which model, how it samples."""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import mlx.core as mx

from moshi_mlx import Pipeline, catalog, hub
from moshi_mlx.codec import BACKENDS, choose_backend
from moshi_mlx.model.kinds import check_model_for
from moshi_mlx.model.text import check_vocabulary
from moshi_mlx.model.weights import summarize_quantization
from moshi_mlx.stream.pipeline import load_text_tokenizer

from .memory import check_fits, choose_quant
from .parser import repo_id, seed, temperature
from .persona_args import persona_inputs, settle_model, voice_name

DTYPES = {"bf16": mx.bfloat16, "float32": mx.float32}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=catalog.MODEL_NAMES, default=None,
                       help="a published model by name: moshi (Kyutai's, the default; --voice picks it), moshika-rl "
                       "(Kyutai's RL-tuned Moshika), personaplex (NVIDIA's PersonaPlex: a role and a voice prompt), "
                       "personaplex-rl (Kyutai's RL-tuned PersonaPlex)")
    group.add_argument("--voice", type=voice_name, default=None, metavar="NAME",
                       help="moshiko (male, the default) or moshika (female) for Moshi; for PersonaPlex one of its "
                       "voices (NATF0-3, NATM0-3, VARF0-4, VARM0-4; default NATF2)")
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
    add_dtype_arg(group)


def add_dtype_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--dtype, for every command that loads a model (`chat`, `run`, `bench`)."""
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="bf16",
        help="precision of the model's weights and arithmetic: bf16 (default), or float32 (a PyTorch checkpoint "
        "at its reference precision; quantized weights keep their own)",
    )


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--seed", type=seed, default=None, help="random seed: the same input gives the same output")
    group.add_argument("--temp", type=temperature, default=0.8, help="audio sampling temperature (0 = greedy)")
    group.add_argument("--temp-text", type=temperature, default=0.7, help="text sampling temperature (0 = greedy)")


def resolve_files(args: argparse.Namespace) -> hub.ModelFiles:
    """The model files the options name: local paths win, the rest from the Hugging Face repo (or its cache)."""
    settle_model(args)  # --model NAME -> its repo and precision
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
        hf_repo=args.hf_repo, voice=args.voice or "moshiko", quant=quant, moshi_weights=args.moshi_weights,
        mimi_weights=args.mimi_weights, tokenizer=args.tokenizer, config=args.config,
    )
    check_fits(files.quant, files.moshi_weights)
    return files


def model_inputs(args: argparse.Namespace, files: hub.ModelFiles | None = None) -> dict[str, str | Path | None]:
    """The files the model options read (by option, then as resolved from the hub), for `check_outputs`."""
    inputs: dict[str, str | Path | None] = {
        "--moshi-weights": args.moshi_weights, "--mimi-weights": args.mimi_weights, "--tokenizer": args.tokenizer,
        "--config": args.config, **persona_inputs(args),
    }
    if files is not None:
        inputs.update({"the Moshi weights": files.moshi_weights, "the Mimi weights": files.mimi_weights,
                       "the text tokenizer": files.tokenizer})
    return inputs


def check_model_files(files: hub.ModelFiles, command: str = "chat") -> None:
    """What can be checked before the slow loading: that the model is for `command`, the tokenizer against the
    model's text vocabulary (the config's types and ranges are checked as it is read; the weights' dtypes and
    values as they load)."""
    check_model_for(command, files.config, f"the model ({Path(files.moshi_weights).name})")
    check_vocabulary(load_text_tokenizer(files.tokenizer), files.config, files.tokenizer)


def codec_line(backend: str, why: str) -> str:
    """The line said at start: which Mimi backend runs and why."""
    return f"Mimi codec: {'MLX Mimi' if backend == 'mlx' else 'rustymimi'} ({why})"


def load_files(
    args: argparse.Namespace,
    files: hub.ModelFiles,
    loading: AbstractContextManager | None = None,
    temp: float | None = None,
) -> Pipeline:
    """Load the pipeline (inside `loading`, e.g. a spinner), then say which Mimi backend runs and what the options
    could not change (on stderr). `temp`, when given, stands for `--temp` (a model with no audio to sample)."""
    mimi, why = choose_backend(args.mimi)
    with loading or nullcontext():
        pipeline = Pipeline.load(
            files.moshi_weights, files.mimi_weights, files.tokenizer, files.config, seed=args.seed,
            temp=args.temp if temp is None else temp, temp_text=args.temp_text, dtype=DTYPES[args.dtype], mimi=mimi,
        )
    print(codec_line(mimi, why), file=sys.stderr)
    held = summarize_quantization(pipeline.gen.lm.quantization)
    for note in (quantization_note(args, held), dtype_note(args.dtype, held, Path(files.moshi_weights).name)):
        if note:
            print(note, file=sys.stderr)
    return pipeline


def quantization_note(args: argparse.Namespace, held: str) -> str | None:
    """One line when -q asked for another precision than the local weights file holds (`held`: it is used as
    it is)."""
    if args.quant is None or args.moshi_weights is None or held == hub.normalize_quant(args.quant):
        return None
    return (f"note: -q {args.quant} does not apply to --moshi-weights {Path(args.moshi_weights).name}: it holds "
            f"{held} weights, used as they are")


def dtype_note(dtype: str, held: str, weights: str) -> str | None:
    """One line when --dtype float32 meets quantized weights (`held`): their packed values keep their bits; only
    their scales and the tensors left unquantized (norms) load as float32."""
    if dtype == "bf16" or held == "bf16":
        return None
    return (f"note: --dtype {dtype} does not apply to the {held} weights of {weights}: quantized weights keep their "
            f"own precision (their scales and the unquantized tensors load as {dtype})")
