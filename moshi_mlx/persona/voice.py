"""A PersonaPlex voice: from an audio file (loudness-normalised, then Mimi's codes) or a published `.pt` embedding.

PersonaPlex's voice prompt from audio (`LMGen.load_voice_prompt` in NVIDIA's `personaplex`): the file at 24 kHz,
normalised to -24 LUFS, cut into 80 ms frames (the last one zero-padded), each frame encoded by Mimi's streaming
encoder from a fresh state. Its `.pt` voices hold what that prompt left: the temporal transformer's input
embeddings of each prompt step (`embeddings` [N, 1, 1, dim]) and the generator's token ring after it (`cache`
[1, 1 + n_q, max_delay + 3]); they are tied to the weights that made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codec import FRAME_SIZE, SAMPLE_RATE, Codec
from ..errors import MoshiError
from ..model.config import LmConfig
from ..stream.audio_io import read_mono_24k
from .loudness import BLOCK_S, normalize_loudness
from .torch_zip import load_torch_file

TARGET_LUFS = -24.0


@dataclass(frozen=True)
class VoiceAudio:
    """A voice prompt from audio: the normalised samples (mono, 24 kHz, float32) and where they came from."""

    samples: np.ndarray
    source: str

    @property
    def frames(self) -> int:
        return -(-len(self.samples) // FRAME_SIZE)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class VoiceEmbedding:
    """A PersonaPlex `.pt` voice: `embeddings` float32 [N, 1, 1, dim], `cache` int64 [1, 1 + n_q, max_delay + 3]."""

    embeddings: np.ndarray
    cache: np.ndarray
    source: str

    @property
    def frames(self) -> int:
        return self.embeddings.shape[0]


def read_voice_audio(path: str | Path) -> VoiceAudio:
    """Any audio file `run` reads, mixed to mono at 24 kHz and normalised to -24 LUFS as PersonaPlex does."""
    name = Path(path).name
    try:
        samples = read_mono_24k(path)
    except MoshiError as e:
        raise MoshiError(f"voice prompt {e}") from None
    if len(samples) < BLOCK_S * SAMPLE_RATE:
        raise MoshiError(f"voice prompt {name} lasts {len(samples) / SAMPLE_RATE:.2f} s: its loudness needs at least "
                         f"{BLOCK_S:.1f} s (a few seconds of one person speaking is best)")
    try:
        normalised = normalize_loudness(samples, SAMPLE_RATE, TARGET_LUFS)
    except ValueError:
        raise MoshiError(f"voice prompt {name} is silent (under -70 LUFS): give a recording of the voice") from None
    return VoiceAudio(normalised, name)


def encode_voice(codec: Codec, voice: VoiceAudio) -> np.ndarray:
    """Mimi's codes of the voice prompt, [num_codebooks, frames] int64, encoded from a fresh stream; the codec is
    reset again afterwards, ready for the conversation."""
    padded = np.zeros(voice.frames * FRAME_SIZE, np.float32)
    padded[: len(voice.samples)] = voice.samples
    codec.reset()
    try:
        codes = [codec.encode(frame) for frame in padded.reshape(voice.frames, FRAME_SIZE)]
    finally:
        codec.reset()
    return np.stack([np.asarray(c, dtype=np.int64).reshape(-1) for c in codes], axis=1)


def read_voice_embedding(source: str | Path | bytes, name: str, config: LmConfig) -> VoiceEmbedding:
    """A `.pt` voice (a path, or its bytes), checked against the model it is to prompt (shapes, token ranges, and
    that its steps fit the context, as the prefill checks them)."""
    from .prompt import PersonaPrompt, check_prompt

    data = load_torch_file(source, name)
    if not isinstance(data, dict) or set(data) != {"embeddings", "cache"}:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise MoshiError(f"{name} is not a PersonaPlex voice: it holds {keys or 'nothing'}, not embeddings and cache")
    embeddings, cache = data["embeddings"], data["cache"]
    if not (isinstance(embeddings, np.ndarray) and np.issubdtype(embeddings.dtype, np.floating)
            and isinstance(cache, np.ndarray) and np.issubdtype(cache.dtype, np.integer)):
        raise MoshiError(f"{name} is not a PersonaPlex voice: its embeddings must be float and its cache integer "
                         "tensors")
    voice = VoiceEmbedding(embeddings.astype(np.float32), cache.astype(np.int64), name)
    if voice.frames == 0:
        raise MoshiError(f"voice {name} holds no frames; download it again")
    try:
        check_prompt(PersonaPrompt(voice_embeddings=voice.embeddings, voice_cache=voice.cache), config)
    except MoshiError as e:
        raise MoshiError(f"voice {name}: {e}") from None
    return voice
