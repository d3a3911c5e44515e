"""`moshi-mlx download`: fetch a model's files into the Hugging Face cache, for offline conversations later."""

from __future__ import annotations

from huggingface_hub import constants

from moshi_mlx import MoshiError, catalog, hub

from .memory import choose_quant
from .parser import Parser, repo_id


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="moshi-mlx download",
        description="Download Moshi's weights, Mimi's weights and the text tokenizer (and config.json when the "
        "repo has one) into the Hugging Face cache. Afterwards `moshi-mlx` works offline with the same options.",
    )
    parser.add_argument("--voice", choices=hub.VOICES, default="moshiko", help="moshiko (male) or moshika (female)")
    parser.add_argument(
        "-q", "--quantize", dest="quant", choices=["4", "8", "bf16"], default=None,
        help="weights precision (default: the one --hf-repo holds, else what `moshi-mlx chat` would choose for this "
        "machine's memory)",
    )
    parser.add_argument("--hf-repo", type=repo_id, default=None,
                        help="Hugging Face repo (default: kyutai/<voice>-mlx-<q>)")
    parser.add_argument("--model", choices=[*catalog.CHECKPOINTS, *hub.STT_MODELS], default=None,
                        help="a published model by name (bf16): moshika-rl, personaplex, personaplex-rl (with "
                        "PersonaPlex's voices) for `chat` and `run`; a speech-to-text model for `moshi-mlx transcribe`")
    parser.add_argument("--vad", action="store_true",
                        help="with --model stt-1b: the weights with the end-of-turn head (`transcribe --vad`)")
    args = parser.parse_args(argv)

    known = catalog.CHECKPOINTS.get(args.model) or (catalog.by_repo(args.hf_repo) if args.model is None else None)
    if known is not None:
        if args.hf_repo is not None and args.hf_repo.lower() != known.repo.lower():
            raise MoshiError(f"--model {args.model} is {known.repo}: leave out --hf-repo {args.hf_repo}")
        if args.quant and hub.normalize_quant(args.quant) not in known.quants:
            raise MoshiError(f"{known.repo} publishes bf16 weights only: leave out -q {args.quant} (`moshi-mlx "
                             "quantize` makes q4 or q8 from them)")
        args.hf_repo, args.model = known.repo, None
    if args.model is not None:
        quant = hub.normalize_quant(args.quant or "bf16")
    elif args.quant:
        quant = hub.normalize_quant(args.quant)
    else:
        quant = (args.hf_repo and hub.repo_quant(args.hf_repo)) or choose_quant()[0]
    if args.model is not None and args.hf_repo is None:
        repo = hub.stt_repo(args.model, quant, vad=args.vad)
    else:
        repo = args.hf_repo or hub.default_repo(args.voice, quant)
    if constants.HF_HUB_OFFLINE:
        raise MoshiError(f"cannot download {repo}: HF_HUB_OFFLINE is set; unset it and connect to the internet")
    if not hub.hub_reachable():
        raise MoshiError(f"cannot download {repo}: {hub.offline_hint()} (no network?); connect to the internet")
    print(f"Downloading {repo} ({quant}) into {constants.HF_HUB_CACHE}")
    paths = hub.download(repo, quant)
    size = sum(p.stat().st_size for p in paths) / 1024**3
    for path in paths:
        print(f"  {path}")
    if args.model is not None:
        options = f"--hf-repo {repo}" if args.hf_repo else f"--model {args.model}{' --vad' if args.vad else ''}"
        print(f"Done: {size:.2f} GiB. Offline from now on: `moshi-mlx transcribe {options}`")
        return
    if known is not None:
        print(known.licence_line())
        print(f"Done: {size:.2f} GiB. Offline from now on: `moshi-mlx chat --model {known.name}`")
        return
    options = f"--hf-repo {repo}" if args.hf_repo else f"--voice {args.voice}"
    print(f"Done: {size:.2f} GiB. Offline from now on: `moshi-mlx chat {options} -q {quant.removeprefix('q')}`")
