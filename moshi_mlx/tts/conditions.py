"""The TTS model's conditions: the voices (speaker embeddings for cross-attention) and the control / CFG values.

As Kyutai's `TTSModel.make_condition_attributes` builds them: `control` is "ok"; `cfg` is the coefficient as a
string ("2.0") for models distilled for CFG, else left out (None); up to `max_speakers` voices fill one
cross-attention source `[1, max_speakers * T, dim]`, each voice's `speaker_wavs` `[1, dim, T]` in its slot and the
empty slots masked (the conditioner puts its learnt padding there). For classifier-free guidance proper, the
unconditioned twin has every attribute dropped: the strings None, the tensors zero and masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from ..errors import MoshiError
from ..model.lm import Lm

DEFAULT_MAX_SPEAKERS = 5
SPEAKER_KEY = "speaker_wavs"


@dataclass
class Attributes:
    """One batch item's conditioning: strings for `lut` conditioners, `(tensor, mask)` for `tensor` ones."""

    text: dict[str, str | None] = field(default_factory=dict)
    tensors: dict[str, tuple[mx.array, mx.array]] = field(default_factory=dict)

    def dropped(self) -> Attributes:
        """Every attribute dropped (Kyutai's `dropout_all_conditions`)."""
        return Attributes({k: None for k in self.text},
                          {k: (mx.zeros_like(t), mx.zeros_like(m)) for k, (t, m) in self.tensors.items()})


def cfg_values(lm: Lm) -> list[float]:
    """The CFG coefficients a CFG-distilled model takes as a condition (empty: CFG is a second pass)."""
    provider = lm.get("condition_provider")
    if provider is None or "cfg" not in provider.conditioners:
        return []
    return sorted(float(v) for v in provider.lut_values("cfg") or [])


def is_multi_speaker(lm: Lm) -> bool:
    """Voices are speaker embeddings (cross-attention) rather than an audio prefix."""
    provider = lm.get("condition_provider")
    return provider is not None and SPEAKER_KEY in provider.conditioners


def make_attributes(lm: Lm, voices: list[mx.array], cfg_coef: float | None,
                    max_speakers: int = DEFAULT_MAX_SPEAKERS) -> Attributes:
    """The attributes for `voices` (each `speaker_wavs` `[1, dim, T]`) and, on CFG-distilled models, `cfg_coef`."""
    text: dict[str, str | None] = {"control": "ok"}
    if cfg_coef is None:
        text["cfg"] = None
    else:
        valid = cfg_values(lm)
        if cfg_coef not in valid:
            raise MoshiError(f"--cfg-coef {cfg_coef:g} is not one this model takes: use one of "
                             f"{', '.join(f'{v:g}' for v in valid)}")
        text["cfg"] = format(cfg_coef, ".1f")
    tensors = {}
    if voices:
        if len(voices) > max_speakers:
            raise MoshiError(f"{len(voices)} voices: this model takes at most {max_speakers}")
        length, dim = voices[0].shape[2], voices[0].shape[1]
        slots = mx.zeros((max_speakers, length, dim), dtype=mx.float32)
        mask = mx.zeros((max_speakers, length), dtype=mx.bool_)
        for i, voice in enumerate(voices):
            slots[i] = voice[0].T.astype(mx.float32)
            mask[i] = True
        tensors[SPEAKER_KEY] = (slots.reshape(1, -1, dim), mask.reshape(1, -1))
    provider = lm.get("condition_provider")
    names = set(provider.conditioners) if provider is not None else set()
    text = {k: v for k, v in text.items() if k in names}
    return Attributes(text, tensors)


@dataclass
class Conditions:
    """What the generator feeds the model: the summed condition `[B, 1, dim]` and each layer's cross-attention
    keys and values (B is 2 with CFG: the conditioned item, then its unconditioned twin)."""

    sum: mx.array | None
    cross_kv: list[tuple[mx.array, mx.array]] | None


def prepare(lm: Lm, attributes: list[Attributes]) -> Conditions:
    """Run the conditioners and the fuser once for a generation; the cross keys and values are computed here."""
    provider = lm.get("condition_provider")
    if provider is None:
        return Conditions(None, None)
    missing = [n for n in provider.tensor_names if any(n not in a.tensors for a in attributes)]
    if missing:
        raise MoshiError(f"this model needs a voice ({', '.join(missing)}): give one with --voice")
    conditions = provider.conditions([a.text for a in attributes], [a.tensors for a in attributes])
    total = provider.sum_condition(conditions)
    src = provider.cross_source(conditions)
    kv = None
    if src is not None:
        kv = [layer.cross_attention.source_kv(src) for layer in lm.transformer.layers]
    mx.eval([x for x in (total, kv) if x is not None])
    return Conditions(total, kv)
