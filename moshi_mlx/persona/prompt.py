"""PersonaPlex's system prompts, fed before the conversation as NVIDIA's `LMGen.step_system_prompts` feeds them.

Read in NVIDIA's `personaplex` (commit 3428dfd): `moshi/moshi/models/lm.py` (the steps, SILENCE_TOKENS,
SINE_TOKENS, `zero_text_code` 3) and `moshi/moshi/offline.py` / `server.py` (`wrap_with_system_tags`, the
tokenizer's `encode`, `audio_silence_frame_cnt = int(0.5 * frame_rate)`). In order: the voice prompt (one step per
Mimi frame, Moshi's audio forced to its codes; or a saved voice's embeddings replayed as the temporal
transformer's input, then its token ring restored), 6 steps of silence, the role one text token per step, 6 steps
of silence. The user's audio is the sine's codes and the text 3 throughout, but for the role's tokens; Moshi's
audio is the silence's codes outside the voice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import MoshiError
from ..model.persona_gen import PersonaGen, ring_length
from ..model.persona_layout import MOSHI_STREAMS

SILENCE_CODES = np.array([948, 243, 1178, 546, 1736, 1030, 1978, 2008])  # Mimi's codes of silence
SINE_CODES = np.array([430, 1268, 381, 1611, 1095, 1495, 56, 472])  # Mimi's codes of NVIDIA's 440 Hz sine
SILENCE_STEPS = 6  # int(0.5 s * 12.5 Hz), after the voice and after the role
PROMPT_TEXT = 3  # the text stream outside the role's tokens (NVIDIA's `zero_text_code`)
SYSTEM_TAG = "<system>"


@dataclass
class PersonaPrompt:
    """A role and a voice. `voice_codes` `[8, T]` (Mimi's codes of a voice recording, codebooks first) or a saved
    voice: `voice_embeddings` `[N, 1, 1, dim]` (or `[N, dim]`) with its token ring `voice_cache` `[1, 17, 4]`."""

    text_tokens: list[int] | None = None
    voice_codes: np.ndarray | None = None
    voice_embeddings: np.ndarray | None = None
    voice_cache: np.ndarray | None = None


def system_text(text: str) -> str:
    """The role between NVIDIA's `<system>` tags (kept when the text already starts and ends with them)."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


def persona_tokens(tokenizer: Any, text: str) -> list[int] | None:
    """The role's text tokens as PersonaPlex feeds them (the ordinary SentencePiece `encode`); None for ""."""
    if not text:
        return None
    return [int(t) for t in tokenizer.encode(system_text(text))]


def voice_steps(prompt: PersonaPrompt) -> int:
    if prompt.voice_embeddings is not None:
        return len(prompt.voice_embeddings) + 1  # NVIDIA's replay: a first call that only sets the initial tokens
    return 0 if prompt.voice_codes is None else np.asarray(prompt.voice_codes).shape[-1]


def prompt_steps(prompt: PersonaPrompt) -> int:
    """Model steps the prompt takes: the voice, 6 of silence, the role's tokens, 6 of silence."""
    return voice_steps(prompt) + 2 * SILENCE_STEPS + len(prompt.text_tokens or [])


def check_prompt(prompt: PersonaPrompt, cfg: Any) -> None:
    """One-line `MoshiError`s for a prompt this model cannot take."""
    if prompt.voice_codes is not None and prompt.voice_embeddings is not None:
        raise MoshiError("a persona takes one voice: a recording's codes or a saved voice, not both")
    if prompt.voice_codes is not None:
        codes = np.asarray(prompt.voice_codes)
        if codes.ndim != 2 or codes.shape[0] != MOSHI_STREAMS or codes.shape[1] < 1:
            raise MoshiError(f"voice prompt codes have shape {codes.shape}, expected [{MOSHI_STREAMS}, frames]")
        _check_range(codes, cfg.card, "voice prompt codes")
    if prompt.voice_embeddings is not None:
        embeddings = np.asarray(prompt.voice_embeddings)
        if embeddings.ndim < 2 or embeddings.shape[-1] != cfg.dim or embeddings.size // cfg.dim != len(embeddings):
            raise MoshiError(f"the voice's embeddings have shape {embeddings.shape}, this model takes [N, 1, 1, "
                             f"{cfg.dim}]: the voice was made for other weights")
        if not np.isfinite(embeddings).all():
            raise MoshiError("the voice's embeddings hold NaN or infinite values: the voice file is damaged")
        cache = None if prompt.voice_cache is None else np.asarray(prompt.voice_cache)
        ring = (1, cfg.num_codebooks, ring_length(cfg))
        if cache is None or cache.shape != ring:
            raise MoshiError(f"the voice's token cache has shape {None if cache is None else cache.shape}, this "
                             f"model takes {list(ring)}: the voice was made for other weights")
        _check_range(cache[0, :1], cfg.text_card + 1, "the voice's token cache (text)")
        _check_range(cache[0, 1:], cfg.card + 1, "the voice's token cache (audio)")
    if prompt.text_tokens is not None:
        _check_range(np.asarray(prompt.text_tokens, dtype=np.int64), cfg.text_card, "the role's text tokens")
    steps = prompt_steps(prompt)
    if cfg.context is not None and steps > cfg.context:  # the prefill's steps must fit PersonaGen's window
        raise MoshiError(f"the persona takes {steps} steps ({voice_steps(prompt)} of voice, "
                         f"{len(prompt.text_tokens or [])} of text), more than the model's context of {cfg.context}: "
                         "shorten the role or the voice")


def _check_range(values: np.ndarray, card: int, what: str) -> None:
    if not np.issubdtype(values.dtype, np.integer):
        raise MoshiError(f"{what} are {values.dtype}, expected whole numbers")
    if values.size and (values.min() < 0 or values.max() >= card):
        raise MoshiError(f"{what} must lie in [0, {card}), got values from {values.min()} to {values.max()}")


def prefill(gen: PersonaGen, prompt: PersonaPrompt, on_step: Callable[[int, int], None] | None = None) -> int:
    """Feed the prompt to a fresh PersonaPlex generator, before the first user frame; returns the steps run.

    Every token of a prompt step is given, so the steps run as a batch through the temporal transformer (in
    chunks, one host synchronisation each) and the depth transformer is not needed. `on_step(done, total)` after
    each chunk and at the end. Run it on the thread that runs the conversation.
    """
    if not isinstance(gen, PersonaGen):
        raise MoshiError("this model takes no persona: a role and a voice need PersonaPlex's weights")
    if gen.step_index != 0:
        raise RuntimeError("prefill a fresh generator: reset() it first")
    cfg = gen.cfg
    check_prompt(prompt, cfg)
    total, done = prompt_steps(prompt), 0

    def chunk_done(calls: int) -> None:
        nonlocal done
        done += calls
        if on_step is not None:
            on_step(min(done, total), total)

    rows: list[tuple[int, np.ndarray]] = []  # (text, Moshi's audio) per step; the user's is the sine throughout
    if prompt.voice_embeddings is not None:
        embeddings = np.asarray(prompt.voice_embeddings, dtype=np.float32).reshape(-1, cfg.dim)
        calls = len(embeddings) + 1
        # NVIDIA's `step_embeddings` provides the initial tokens on every stream, the text 3, then restores the ring.
        dummy = np.full((calls, MOSHI_STREAMS), cfg.card)
        gen.force(np.full(calls, PROMPT_TEXT), dummy, dummy, mx.array(embeddings), chunk_done)
        gen.restore_ring(np.asarray(prompt.voice_cache)[0])
    elif prompt.voice_codes is not None:
        rows += [(PROMPT_TEXT, frame) for frame in np.asarray(prompt.voice_codes).T]
    rows += [(PROMPT_TEXT, SILENCE_CODES)] * SILENCE_STEPS
    rows += [(int(token), SILENCE_CODES) for token in prompt.text_tokens or []]
    rows += [(PROMPT_TEXT, SILENCE_CODES)] * SILENCE_STEPS
    text = np.array([t for t, _ in rows])
    gen.force(text, np.stack([m for _, m in rows]), np.tile(SINE_CODES, (len(rows), 1)), on_chunk=chunk_done)
    if on_step is not None:
        on_step(total, total)
    return total
