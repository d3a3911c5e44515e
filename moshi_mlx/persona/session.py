"""A persona for a conversation: the role's text and the voice, fed to the model before the first user frame."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..codec import FRAME_S, Codec
from ..model.config import LmConfig
from .prompt import PersonaPrompt, check_prompt, persona_tokens, prefill, prompt_steps
from .voice import VoiceAudio, VoiceEmbedding, encode_voice

SHORT_TEXT = 60  # characters of the role shown where one line must do


@dataclass(frozen=True)
class Persona:
    """The role (`text`, as given, and its tokens with PersonaPlex's `<system>` tags) and the voice (audio to
    encode, or a `.pt` embedding); `voice_name` says which voice, for people."""

    text: str | None
    text_tokens: list[int] | None
    voice: VoiceAudio | VoiceEmbedding | None
    voice_name: str | None = None

    @classmethod
    def make(cls, tokenizer: Any, text: str | None, voice: VoiceAudio | VoiceEmbedding | None,
             voice_name: str | None = None) -> Persona:
        tokens = persona_tokens(tokenizer, text) if text else None
        return cls(text, tokens, voice, voice_name or (voice.source if voice is not None else None))

    def prompt(self, codec: Codec | None = None) -> PersonaPrompt:
        """The prompt the model is fed; a voice from audio is encoded with `codec` (from a fresh stream)."""
        prompt = PersonaPrompt(text_tokens=self.text_tokens)
        if isinstance(self.voice, VoiceEmbedding):
            return replace(prompt, voice_embeddings=self.voice.embeddings, voice_cache=self.voice.cache)
        if isinstance(self.voice, VoiceAudio):
            # Without a codec: codes of the right length, to count the steps before the model is loaded.
            codes = encode_voice(codec, self.voice) if codec is not None else np.zeros((8, self.voice.frames), np.int64)
            return replace(prompt, voice_codes=codes)
        return prompt

    @property
    def steps(self) -> int:
        """Model steps the prompt takes."""
        return prompt_steps(self.prompt())

    def check_context(self, config: LmConfig) -> str | None:
        """One line (MoshiError) when the prompt does not fit the model (its context, its shapes, as the prefill
        checks them); a note when it fills over half of what the model sees at a time."""
        check_prompt(self.prompt(), config)
        steps, context = self.steps, config.context
        if context is not None and steps > context // 2:
            return (f"note: the persona takes {steps} of the {context} steps the model sees at a time: its start "
                    f"leaves the model's view after {max(context - steps, 0) * FRAME_S:.0f} s of conversation")
        return None

    def describe(self, width: int = SHORT_TEXT) -> str:
        """`"You are a wise and friendly teacher…" · voice NATF2`, for a header or a line."""
        parts = []
        if self.text:
            text = " ".join(self.text.split())
            parts.append(f'"{text if len(text) <= width else text[: width - 1].rstrip() + "…"}"')
        if self.voice_name:
            parts.append(f"voice {self.voice_name}")
        return " · ".join(parts) or "no prompt"


@dataclass(frozen=True)
class PrefillReport:
    """What feeding the persona cost: model steps, the voice's encoding and the whole, in seconds."""

    steps: int
    encode_s: float
    total_s: float

    def describe(self) -> str:
        per_step = 1000 * (self.total_s - self.encode_s) / max(self.steps, 1)
        encode = f", the voice encoded in {self.encode_s:.1f} s" if self.encode_s else ""
        return (f"Persona read: {self.steps} steps ({self.steps * FRAME_S:.1f} s of prompt) in {self.total_s:.1f} s"
                f" ({per_step:.3g} ms a step{encode})")


def run_prefill(gen: Any, codec: Codec, persona: Persona,
                on_step: Callable[[int, int], None] | None = None) -> PrefillReport:
    """Feed the persona to a fresh generator (`gen.reset()` first); run on the conversation's inference thread."""
    start = time.perf_counter()
    prompt = persona.prompt(codec)
    encoded = time.perf_counter()
    steps = prefill(gen, prompt, on_step)
    end = time.perf_counter()
    return PrefillReport(steps, encoded - start if isinstance(persona.voice, VoiceAudio) else 0.0, end - start)
