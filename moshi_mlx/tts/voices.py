"""Voices: Kyutai's speaker embeddings (`kyutai/tts-voices`, or a local file), checked against the model.

Kyutai's voice files are safetensors holding `speaker_wavs` `[1, dim, T]` (float32), named
`<voice>.<sig>@<epoch>.safetensors` after the `model_id` of the TTS model they were computed for (their metadata
carries the same `sig` and `epoch`). A name is looked up in the voice repo with that suffix, as Kyutai's
`TTSModel.get_voice_path` does, through the same cache as the model files (so it works offline once fetched).
A model without speaker embeddings (`tts-0.75b-en-public`) takes a recording instead (`prefix.py`): a local audio
file, or a file of the repo by its own name (Kyutai's voice suffix is then empty).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx

from ..errors import MoshiError
from ..hub import check_repo_id, fetch
from .prefix import AUDIO_SUFFIXES

VOICE_REPO = "kyutai/tts-voices"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"
KEY = "speaker_wavs"


def voice_suffix(model_id: dict | None) -> str:
    """`.<sig>@<epoch>.safetensors` for a model's `model_id`, or '' when the config has none."""
    if not model_id or "sig" not in model_id or "epoch" not in model_id:
        return ""
    return f".{model_id['sig']}@{model_id['epoch']}.safetensors"


def find_voice(voice: str, model_id: dict | None, repo: str = VOICE_REPO, audio: bool = False) -> Path:
    """A local `.safetensors` file, or a voice of the repo by name (fetched into the cache once); with `audio`
    (a model that clones a recording), a local audio file or a recording of the repo."""
    local = Path(voice).expanduser()
    kind = "a recording (.wav)" if audio else "a voice file (.safetensors)"
    if voice.endswith(".safetensors") and audio:
        raise MoshiError(f"{local.name} is a speaker embedding, but this model clones a voice from a recording: "
                         f"give {kind} or a recording of {repo} by name (e.g. {DEFAULT_VOICE})")
    if local.suffix.lower() in AUDIO_SUFFIXES and local.is_file() and not audio:
        raise MoshiError(f"{local.name} is a recording, but this model takes speaker embeddings: give {kind} "
                         f"made for it, or a voice of {repo} by name")
    if voice.endswith(".safetensors") or (audio and local.is_file()):
        if not local.is_file():
            raise MoshiError(f"voice file not found: {local}")
        return local
    suffix = "" if audio else voice_suffix(model_id)
    if not suffix and not audio:
        raise MoshiError("this model's config has no model_id, so its voices cannot be named: give a voice file "
                         "(.safetensors)")
    try:
        return fetch(check_repo_id(repo), voice + suffix)
    except MoshiError as e:
        if "cannot be downloaded now" in str(e):
            raise MoshiError(f"voice {voice!r} is not in the Hugging Face cache and cannot be downloaded now "
                             f"(offline): use it once while online, or give {kind}") from None
        if "has no file" not in str(e):
            raise
        raise MoshiError(f"unknown voice {voice!r}: {repo} has no {voice + suffix} (the voices are listed at "
                         f"https://huggingface.co/{repo}; or give {kind})") from None


def _metadata(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size)) if size < 1 << 24 else {}
    except (OSError, ValueError, struct.error):
        return {}
    return header.get("__metadata__") or {}


def load_voice(path: Path, model_id: dict | None, dim: int) -> mx.array:
    """The voice's `speaker_wavs` `[1, dim, T]`; a one-line error when it was made for another model."""
    try:
        tensors = mx.load(str(path))
    except Exception as e:  # mlx raises bare RuntimeError/ValueError for unreadable files
        raise MoshiError(f"cannot read voice {path}: {e}") from None
    emb = tensors.get(KEY)
    if emb is None or emb.ndim != 3 or emb.shape[0] != 1:
        raise MoshiError(f"{path.name} is not a voice file: it lacks a '{KEY}' tensor of shape [1, {dim}, T]")
    meta = _metadata(path)
    if model_id and "sig" in meta and str(meta["sig"]) != str(model_id.get("sig")):
        raise MoshiError(f"voice {path.name} was made for model {meta['sig']}@{meta.get('epoch')}, not this one "
                         f"({model_id.get('sig')}@{model_id.get('epoch')}): use a voice for this model")
    if emb.shape[1] != dim:
        raise MoshiError(f"voice {path.name} has {emb.shape[1]}-wide embeddings, this model takes {dim}: "
                         "use a voice for this model")
    return emb.astype(mx.float32)
