"""The model options of `moshi-mlx transcribe`: which speech-to-text model, where its files are, how it runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moshi_mlx import MoshiError, Pipeline, hub
from moshi_mlx.codec import BACKENDS, SAMPLE_RATE
from moshi_mlx.stream.words import Timing, TurnDetector

from .memory import check_fits, needed_gib, total_memory_gib
from .model_args import add_dtype_arg, load_files
from .parser import repo_id, seed, temperature

STT_MODELS = ("stt-1b", "stt-2.6b")
# bf16 tensor sizes of the released weights (from their configs' shapes: 0.99 and 2.62 billion parameters).
STT_WEIGHTS_GIB = {"stt-1b": 1.84, "stt-2.6b": 4.87}


def add_stt_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=STT_MODELS, default="stt-1b",
                       help="stt-1b (English and French, 0.5 s delay, end-of-turn head; default) or stt-2.6b "
                       "(English, 2.5 s delay)")
    group.add_argument("-q", "--quantize", "--quant", dest="quant", choices=["4", "8", "bf16"], default=None,
                       help="weights precision (default bf16, what Kyutai publishes; -q 4|8 with --hf-repo or local "
                       "weights of that precision)")
    group.add_argument("--hf-repo", type=repo_id, default=None,
                       help="Hugging Face repo (default: Kyutai's for --model)")
    group.add_argument("--moshi-weights", default=None,
                       help="local model weights (.safetensors, MLX or PyTorch names)")
    group.add_argument("--mimi-weights", default=None, help="local Mimi weights (.safetensors)")
    group.add_argument("--tokenizer", default=None, help="local text tokenizer (SentencePiece .model)")
    group.add_argument("--config", default=None, help="local model config.json (default: the repo's)")
    group.add_argument("--mimi", choices=BACKENDS, default="auto",
                       help="audio codec: mlx, rust (rustymimi) or auto (mlx on a GPU, else rust when installed)")
    add_dtype_arg(group)
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temp-text", type=temperature, default=0.0,
                          help="text sampling temperature (default 0: greedy, as Kyutai runs these models)")
    sampling.add_argument("--seed", type=seed, default=None, help="random seed (with --temp-text above 0)")


@dataclass(frozen=True)
class SttSettings:
    """What a speech-to-text config says about running it (Kyutai's `stt_config`, its extra heads)."""

    timing: Timing  # the model's delay and the silence put before a file
    heads: int  # extra heads (voice activity)

    @classmethod
    def of(cls, config: Any, vad: bool = False, source: str = "the model") -> SttSettings:
        """The settings of an STT config; one line when it is not one, or has no end-of-turn head for `vad`."""
        from moshi_mlx.model.stt import check_model_kind, stt_delays
        from moshi_mlx.stream.stt_file import stt_padding

        check_model_kind(config, stt=True, source=source)
        heads = config.extra_heads_num_heads
        if vad and heads <= TurnDetector.HEAD:
            raise MoshiError(f"--vad needs the model's end-of-turn head (extra head {TurnDetector.HEAD}) and {source} "
                             f"has {heads} extra heads: use stt-1b (kyutai/stt-1b-en_fr-candle), or leave out --vad")
        return cls(Timing(stt_delays(config)[0], stt_padding(config)[0] / SAMPLE_RATE), heads)


def config_source(args: argparse.Namespace, files: hub.ModelFiles) -> str:
    """How an error names the model's config."""
    if args.config is not None:
        return f"--config {args.config}"
    if files.repo is not None:
        return f"{files.repo}'s config"
    return "the model (no --config: Moshi's 7B config is assumed; give the STT model's config.json)"


def resolve_stt_files(args: argparse.Namespace) -> hub.ModelFiles:
    """The model files the options name: local paths win, the rest from the Hugging Face repo (or its cache), as
    `chat` finds Moshi's; Kyutai's repo for --model unless --hf-repo (the one with the end-of-turn head for --vad)."""
    local = args.moshi_weights and args.mimi_weights and args.tokenizer
    quant = hub.normalize_quant(args.quant) if args.quant else "bf16"
    repo = args.hf_repo
    if repo is None and not local:
        repo = hub.stt_repo(args.model, quant, vad=args.vad)
        if args.moshi_weights is None:
            check_stt_fits(args.model)  # before anything is downloaded
    files = hub.resolve_files(hf_repo=repo, quant=quant, moshi_weights=args.moshi_weights,
                              mimi_weights=args.mimi_weights, tokenizer=args.tokenizer, config=args.config)
    check_fits(files.quant, files.moshi_weights)
    return files


def check_stt_fits(model: str) -> None:
    """One line when the model cannot fit in this machine's memory (as `chat` says it for Moshi)."""
    total, need = total_memory_gib(), needed_gib(STT_WEIGHTS_GIB[model])
    if need > total:
        hint = "; use --model stt-1b" if model != "stt-1b" and needed_gib(STT_WEIGHTS_GIB["stt-1b"]) <= total else ""
        raise MoshiError(f"not enough memory for {model}: it needs about {need:.1f} GiB and this machine has "
                         f"{total:.1f} GiB{hint}")


def model_label(args: argparse.Namespace, files: hub.ModelFiles) -> str:
    if args.moshi_weights is not None:
        return Path(args.moshi_weights).name
    return f"{args.model if args.hf_repo is None else files.repo} {files.quant}"


def load_stt(args: argparse.Namespace, files: hub.ModelFiles) -> Pipeline:
    """Load the speech-to-text pipeline (greedy unless --temp-text), then say which Mimi backend runs (stderr)."""
    return load_files(args, files, temp=0.0)
