"""Finding model files: Hugging Face repos (with their cache and offline mode) or local paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import get_session, validate_repo_id

from . import catalog
from .errors import MoshiError, first_line
from .model.config import LmConfig
from .model.persona_layout import checkpoint_preset, config_from_checkpoint, is_model_config

VOICES = ("moshiko", "moshika")
QUANTS = ("q4", "q8", "bf16")
MOSHI_FILES = {"q4": "model.q4.safetensors", "q8": "model.q8.safetensors", "bf16": "model.safetensors"}
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
CONFIG_FILE = "config.json"
# How long the one look at the hub may take before the network counts as missing (a hub that answers at all,
# even with an error, counts as reachable).
PROBE_TIMEOUT_S = 3.0
_reachable: bool | None = None  # the probe's answer, once per process
_OFFLINE_SET = constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE as the user set it


@dataclass
class ModelFiles:
    moshi_weights: Path
    mimi_weights: Path
    tokenizer: Path
    config: LmConfig
    repo: str | None
    quant: str


def normalize_quant(quant: str | int) -> str:
    """'4', 4, 'q4' -> 'q4'; 'bf16' stays."""
    q = str(quant).lower()
    q = q if q.startswith("q") or q == "bf16" else f"q{q}"
    if q not in QUANTS:
        raise MoshiError(f"unknown quantization {quant!r}: use 4, 8 or bf16")
    return q


def default_repo(voice: str = "moshiko", quant: str | int = "q4") -> str:
    """Kyutai's MLX repo for a voice and quantization, e.g. kyutai/moshiko-mlx-q4."""
    if voice not in VOICES:
        raise MoshiError(f"unknown voice {voice!r}: use {' or '.join(VOICES)}")
    return f"kyutai/{voice}-mlx-{normalize_quant(quant)}"


# Kyutai's speech-to-text models (`--model`): the MLX repo (Kyutai's MLX names, bf16), and the repo whose weights
# carry the voice-activity heads (Kyutai's PyTorch names; Kyutai's own scripts switch to it for --vad). Each repo's
# config.json names its files (moshi_name, mimi_name, tokenizer_name): model.safetensors,
# mimi-pytorch-e351c8d8@125.safetensors, tokenizer_en_fr_audio_8000.model (1B) / tokenizer_en_audio_4000.model.
STT_MODELS = {
    "stt-1b": ("kyutai/stt-1b-en_fr-mlx", "kyutai/stt-1b-en_fr-candle"),
    "stt-2.6b": ("kyutai/stt-2.6b-en-mlx", None),
}


def stt_repo(model: str, quant: str | int = "bf16", vad: bool = False) -> str:
    """Kyutai's repo for `--model stt-1b|stt-2.6b`: bf16 only (Kyutai publishes no q4/q8 STT weights); `vad` asks
    for weights with the voice-activity heads."""
    if model not in STT_MODELS:
        raise MoshiError(f"unknown speech-to-text model {model!r}: use {' or '.join(STT_MODELS)}")
    if normalize_quant(quant) != "bf16":
        raise MoshiError(f"Kyutai publishes {model} in bf16 only: use -q bf16 (or --hf-repo for other weights)")
    mlx_repo, vad_repo = STT_MODELS[model]
    if vad and vad_repo is None:
        raise MoshiError(f"{model} has no voice-activity heads (only stt-1b has them): leave out --vad")
    return vad_repo if vad else mlx_repo


def repo_quant(repo: str) -> str | None:
    """The quantization a repo holds, for --hf-repo without -q: the one whose Moshi file is in the cache, else the
    one its name ends with (kyutai/moshiko-mlx-q4); None when neither tells."""
    check_repo_id(repo)
    if (known := catalog.by_repo(repo)) is not None:
        return known.quants[0]
    held = [quant for quant, name in MOSHI_FILES.items() if _cached(repo, name)]
    if len(held) == 1:
        return held[0]
    suffix = repo.lower().rsplit("-", 1)[-1]
    return suffix if suffix in QUANTS else None


def check_repo_id(repo: str) -> str:
    """`repo` when it is a valid Hugging Face repo id, else one line saying what one looks like."""
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise MoshiError(
            f"{repo!r} is not a Hugging Face repo id: owner/name in letters, digits, '-', '_' and '.', "
            "e.g. kyutai/moshiko-mlx-q4"
        ) from None
    return repo


def hub_reachable() -> bool:
    """Whether the hub answers, asked once per process with a short timeout.

    Without this, an offline machine with nothing cached waits through huggingface_hub's retries (about 45 s
    and 20 warning lines per file, forever on a network that drops packets); after a failed look every request
    is made from the cache only, and the missing file is reported in one line.
    """
    global _reachable
    if _reachable is None:
        if constants.HF_HUB_OFFLINE:
            _reachable = False
        else:
            try:
                get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S, follow_redirects=False)
                _reachable = True
            except Exception:  # httpx's connection, timeout and proxy errors, or offline mode
                _reachable = False
                # As HF_HUB_OFFLINE=1 from now on: huggingface_hub makes requests of its own too (its user-agent
                # registry, 3 s more on a network that drops packets).
                constants.HF_HUB_OFFLINE = True
    return _reachable


def offline_hint() -> str:
    return "HF_HUB_OFFLINE is set" if _OFFLINE_SET else f"{constants.ENDPOINT} cannot be reached"


def download_command(repo: str, quant: str = "q4") -> str:
    if (known := catalog.by_repo(repo)) is not None:
        return f"moshi-mlx download --model {known.name}"
    return f"moshi-mlx download --hf-repo {repo} -q {quant.removeprefix('q')}"


def _cached(repo: str, filename: str) -> Path | bool | None:
    """A repo file's path in the cache, False when the cache knows the repo has no such file, None when unknown.

    Looked up before any request: a laptop offline without HF_HUB_OFFLINE set would otherwise wait for
    huggingface_hub's retries on every file it cannot confirm (about 25 s for a config.json the repo lacks).
    """
    hit = try_to_load_from_cache(repo, filename)
    return Path(hit) if isinstance(hit, str) else None if hit is None else False


def fetch(repo: str, filename: str, quant: str = "q4", cached_first: bool = True,
          hint: str = "check --hf-repo and -q") -> Path:
    """A file of a Hugging Face repo, from the cache or downloaded into it (with progress).

    `cached_first=False` asks the hub for a newer version of a cached file (what `moshi-mlx download` does);
    `hint` says what to do when the repo has no such file.
    """
    check_repo_id(repo)
    cached = _cached(repo, filename) if cached_first else None
    if cached:
        return cached
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=not hub_reachable()))
    except LocalEntryNotFoundError:
        raise MoshiError(
            f"{filename} of {repo} is not in the Hugging Face cache and cannot be downloaded now "
            f"(offline: {offline_hint()}); run `{download_command(repo, quant)}` while online"
        ) from None
    except GatedRepoError:
        raise MoshiError(f"{repo} is gated: accept its licence on https://huggingface.co/{repo} while logged in, then "
                         "log in here (`hf auth login`, or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise MoshiError(f"Hugging Face repo {repo} not found (or private): check --hf-repo") from None
    except EntryNotFoundError:
        raise MoshiError(f"{repo} has no file {filename}: {hint}") from None
    except (HfHubHTTPError, OSError) as e:
        raise MoshiError(f"cannot download {filename} from {repo}: {first_line(e)}") from None


def _repo_config(repo: str, cached_first: bool = True) -> dict | None:
    """The repo's config.json (newer Kyutai repos carry one), or None."""
    check_repo_id(repo)
    cached = _cached(repo, CONFIG_FILE) if cached_first else None
    if cached is False:
        return None
    try:
        path = cached or hf_hub_download(repo, CONFIG_FILE, local_files_only=not hub_reachable())
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except (RepositoryNotFoundError, HfHubHTTPError, OSError):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise MoshiError(f"cannot read {CONFIG_FILE} of {repo}: {e}; give the model config with --config") from None
    if not isinstance(config, dict):
        raise MoshiError(f"{CONFIG_FILE} of {repo} is not a model config; give one with --config")
    return config


def _local(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise MoshiError(f"{what} {p} is a folder: give the file itself")
    if not p.is_file():
        raise MoshiError(f"{what} not found: {p}")
    return p


def resolve_files(
    hf_repo: str | None = None,
    voice: str = "moshiko",
    quant: str | int = "q4",
    moshi_weights: str | Path | None = None,
    mimi_weights: str | Path | None = None,
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
) -> ModelFiles:
    """Every file a conversation needs: local paths win, the rest comes from the repo."""
    quant = normalize_quant(quant)
    repo = check_repo_id(hf_repo) if hf_repo is not None else None
    if repo is None and not (moshi_weights and mimi_weights and tokenizer):
        repo = default_repo(voice, quant)
    persona = (known := catalog.by_repo(repo)) is not None and known.persona
    # PersonaPlex's config.json is not a model config: its architecture is NVIDIA's, checked against the weights.
    repo_config = _repo_config(repo) if repo and config is None and not persona else None
    foreign = repo_config is not None and not is_model_config(repo_config)

    def from_repo(local: str | Path | None, key: str, default: str, what: str) -> Path:
        if local is not None:
            return _local(local, what)
        assert repo is not None
        name = (repo_config or {}).get(key) or default
        return fetch(repo, name, quant)

    lm_config = (
        LmConfig.from_json(_local(config, "model config")) if config is not None
        else LmConfig.from_dict(repo_config) if repo_config and not foreign
        else None if persona or foreign
        else LmConfig.moshi_7b()
    )
    weights = from_repo(moshi_weights, "moshi_name", MOSHI_FILES[quant], "Moshi weights")
    if lm_config is None:  # read off the checkpoint's tensors (its header only)
        lm_config = config_from_checkpoint(weights) if persona else checkpoint_preset(weights)
    return ModelFiles(
        moshi_weights=weights,
        mimi_weights=from_repo(mimi_weights, "mimi_name", MIMI_FILE, "Mimi weights"),
        tokenizer=from_repo(tokenizer, "tokenizer_name", TOKENIZER_FILE, "text tokenizer"),
        config=lm_config,
        repo=repo,
        quant=quant,
    )


def download(repo: str, quant: str | int = "q4") -> list[Path]:
    """Fetch everything `resolve_files` will need from `repo`, for offline use later."""
    quant = normalize_quant(quant)
    check_repo_id(repo)
    if not hub_reachable():
        raise MoshiError(f"cannot download {repo}: {offline_hint()} (no network?); connect to the internet")
    repo_config = _repo_config(repo, cached_first=False) or {}
    names = [
        repo_config.get("moshi_name") or MOSHI_FILES[quant],
        repo_config.get("mimi_name") or MIMI_FILE,
        repo_config.get("tokenizer_name") or TOKENIZER_FILE,
    ]
    if (known := catalog.by_repo(repo)) is not None and known.persona:
        names.append("voices.tgz")  # PersonaPlex's published voices (`--voice NAME`)
    return [fetch(repo, name, quant, cached_first=False) for name in names]
