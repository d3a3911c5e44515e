"""How far a quantized model is from the bf16 one: teacher-forced logits on the same codes, compared.

For the text stream and Moshi's audio streams: KL divergence from the bf16 distribution (nats per token), top-1
agreement with bf16, and each model's cross-entropy on the codes themselves.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from moshi_mlx import FRAME_SIZE, Lm, LmConfig, MoshiError, load_codec, load_lm, read_mono_24k


@dataclass(frozen=True)
class Logits:
    text: np.ndarray  # float32 [B, T, text_card]
    audio: np.ndarray  # float32 [B, dep_q, T, card]


@dataclass(frozen=True)
class StreamMetrics:
    kl: float  # mean KL(bf16 || quantized), nats per token
    top1: float  # fraction of positions where both models rank the same token first
    ce: float  # quantized model's cross-entropy on the codes, nats per token
    ce_reference: float  # bf16 model's cross-entropy on the same codes


@dataclass(frozen=True)
class QualityReport:
    name: str
    text: StreamMetrics
    audio: StreamMetrics | None  # None for a model that generates no audio (STT, dep_q 0)
    bits_per_weight: float | None = None
    size_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(config: LmConfig) -> int:
    """Parameters of the model (from a lazy model: nothing is allocated)."""
    return sum(a.size for _, a in tree_flatten(Lm(config).parameters()))


def random_codes(config: LmConfig, steps: int = 64, batch: int = 4, seed: int = 0) -> np.ndarray:
    """Uniform random codes `[batch, 1 + n_q, steps]`: text ids below `text_card`, audio below `card`."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, config.text_card, size=(batch, 1, steps))
    audio = rng.integers(0, config.card, size=(batch, config.n_q, steps))
    return np.concatenate([text, audio], axis=1)


def wav_codes(
    wav: str | Path | np.ndarray, mimi_weights: str | Path, config: LmConfig, max_steps: int = 250
) -> np.ndarray:
    """Codes `[1, 1 + n_q, T]` of a recording (a file, or mono 24 kHz samples): its Mimi codes fill Moshi's and
    the user's audio streams, the text stream is padding (as when nobody speaks in Moshi's text)."""
    codec = load_codec(mimi_weights)
    if config.card < codec.cardinality:
        raise MoshiError(f"the model's audio tables have {config.card} entries, Mimi's codes go up to "
                         f"{codec.cardinality}: use random codes (drop --wav) for this model")
    pcm = wav if isinstance(wav, np.ndarray) else read_mono_24k(wav)
    steps = min(max_steps, len(pcm) // FRAME_SIZE)
    if steps < 2:
        raise MoshiError(f"{'the recording' if isinstance(wav, np.ndarray) else wav} is shorter than two 80 ms "
                         "frames")
    frames = np.stack([codec.encode(pcm[t * FRAME_SIZE : (t + 1) * FRAME_SIZE]) for t in range(steps)], axis=1)
    codes = np.empty((1, 1 + config.n_q, steps), dtype=np.int64)
    codes[0, 0] = config.existing_text_padding_id
    for j in range(config.n_q):
        codes[0, 1 + j] = frames[j % frames.shape[0]]
    return codes


def logits_of(lm: Lm, codes: np.ndarray) -> Logits:
    text, audio = lm.forward_codes(mx.array(codes))
    text, audio = text[:, 0].astype(mx.float32), audio.astype(mx.float32)
    mx.eval(text, audio)
    return Logits(np.array(text), np.array(audio))


def file_logits(weights: str | Path, config: LmConfig, codes: np.ndarray) -> Logits:
    """Logits of the checkpoint's model; the model is dropped afterwards, so two 7B never share memory."""
    lm = load_lm(weights, config)
    logits = logits_of(lm, codes)
    del lm
    gc.collect()
    mx.clear_cache()
    return logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def stream_metrics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> StreamMetrics:
    """Metrics over the positions that have a prediction (delayed streams end with NaN logits)."""
    valid = ~np.isnan(reference).any(axis=-1)
    ref, cand, tgt = _log_softmax(reference[valid]), _log_softmax(candidate[valid]), targets[valid]
    rows = np.arange(len(tgt))
    return StreamMetrics(
        kl=float((np.exp(ref) * (ref - cand)).sum(axis=-1).mean()),
        top1=float((ref.argmax(axis=-1) == cand.argmax(axis=-1)).mean()),
        ce=float(-cand[rows, tgt].mean()),
        ce_reference=float(-ref[rows, tgt].mean()),
    )


def compare(
    name: str, reference: Logits, candidate: Logits, codes: np.ndarray, config: LmConfig, **sizes: float | None
) -> QualityReport:
    return QualityReport(
        name=name,
        text=stream_metrics(reference.text, candidate.text, codes[:, 0]),
        audio=stream_metrics(reference.audio, candidate.audio, codes[:, 1 : 1 + config.dep_q])
        if config.dep_q else None,
        **sizes,
    )


def quality_reports(
    reference_weights: str | Path,
    candidates: Mapping[str, str | Path],
    config: LmConfig,
    codes: np.ndarray,
) -> list[QualityReport]:
    """One report per quantized checkpoint (name -> path), each against the bf16 reference."""
    reference = file_logits(reference_weights, config, codes)
    reports = []
    for name, path in candidates.items():
        candidate = file_logits(path, config, codes)
        size = Path(path).stat().st_size
        reports.append(compare(name, reference, candidate, codes, config, size_bytes=size,
                               bits_per_weight=8 * size / count_params(config)))
    return reports


def render_table(reports: list[QualityReport], title: str = "Quality against bf16"):
    """A rich Table of the reports: one row per checkpoint and stream."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("weights", "size", "bits/w", "stream", "KL (nats)", "top-1", "CE", "CE bf16"):
        table.add_column(column, justify="left" if column in ("weights", "stream") else "right")
    for r in reports:
        streams = [("text", r.text)] + ([("audio", r.audio)] if r.audio is not None else [])
        for stream, m in streams:
            first = stream == "text"
            bpw = f"{r.bits_per_weight:.2f}" if first and r.bits_per_weight is not None else ""
            table.add_row(
                r.name if first else "", format_size(r.size_bytes) if first else "", bpw, stream,
                f"{m.kl:.2e}", f"{100 * m.top1:.1f} %", f"{m.ce:.4f}", f"{m.ce_reference:.4f}",
                end_section=stream == streams[-1][0],
            )
    return table


def format_size(n: int | None) -> str:
    """Bytes as MiB or GiB."""
    if n is None:
        return ""
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def write_json(reports: list[QualityReport], path: str | Path, **context: object) -> Path:
    path = Path(path)
    path.write_text(json.dumps({**context, "reports": [r.to_dict() for r in reports]}, indent=2))
    return path
