"""Kyutai's PyTorch checkpoint names and ours (Kyutai's MLX names), both ways."""

from __future__ import annotations

import re
from typing import Any

import mlx.core as mx

from .config import LmConfig

_ATTN = {
    "in_proj_weight": "in_proj",
    "in_proj.weight": "in_proj",
    "out_proj.weight": "out_proj",
}
_LAYER = re.compile(r"^(transformer|depformer)\.layers\.(\d+)\.(.+)$")
# Cross-attention (conditioned models): Kyutai's per-set, fused and MLX names of its single weight set.
_CROSS = re.compile(r"^cross_attention\.(in_projs\.0\.weight|out_projs\.0\.weight|in_proj_weight|in_proj\.weight"
                    r"|out_proj\.weight)$")


def is_pytorch_layout(names: Any) -> bool:
    """Kyutai's PyTorch checkpoints name the audio embeddings `emb.{j}`; the MLX ones `audio_embs.{j}`."""
    return any(n.startswith(("emb.", "depformer_in.", "linears.", "depformer.layers.")) for n in names)


def sanitize(weights: dict[str, mx.array], config: LmConfig) -> dict[str, mx.array]:
    """Map Kyutai's PyTorch names to ours (which are Kyutai's MLX names); MLX names pass through.

    Works tensor by tensor, so a streaming caller may pass any subset of a checkpoint.
    """
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        out.update(_map_pytorch(name, value, config))
    return out


def _slices_using(schedule: list[int], index: int) -> list[int]:
    return [k for k, j in enumerate(schedule) if j == index]


def _norm_param(rest: str, value: mx.array) -> tuple[str, mx.array]:
    if rest.endswith(".alpha"):
        return rest[: -len(".alpha")] + ".weight", value.reshape(-1)
    return rest, value


def _map_layer_param(rest: str, value: mx.array, num_sets: int) -> list[tuple[int | None, str, mx.array]]:
    """Map one layer parameter; returns (weight set or None for shared, our name, value)."""
    m = _CROSS.match(rest)
    if m:
        return [(None, f"cross_attention.{'in_proj' if 'in_proj' in m.group(1) else 'out_proj'}.weight", value)]
    m = re.match(r"^self_attn\.(in_projs|out_projs)\.(\d+)\.weight$", rest)
    if m:
        kind = "in_proj" if m.group(1) == "in_projs" else "out_proj"
        return [(int(m.group(2)), f"self_attn.{kind}.weight", value)]
    for suffix, kind in _ATTN.items():
        if rest == f"self_attn.{suffix}":
            chunks = mx.split(value, num_sets, axis=0) if num_sets > 1 else [value]
            return [(j, f"self_attn.{kind}.weight", c) for j, c in enumerate(chunks)]
    m = re.match(r"^gating\.(\d+)\.(.+)$", rest)
    if m:
        return [(int(m.group(1)), f"gating.{m.group(2)}", value)]
    name, value = _norm_param(rest, value)
    return [(None, name, value)]


def _map_pytorch(name: str, value: mx.array, cfg: LmConfig) -> list[tuple[str, mx.array]]:
    dep_prefix = "depformer.slices"
    if name.startswith(("audio_embs.", f"{dep_prefix}.")):
        return [(name, value)]
    m = re.match(r"^emb\.(\d+)\.(.+)$", name)
    if m:
        return [(f"audio_embs.{m.group(1)}.{m.group(2)}", value)]
    if name.startswith("out_norm."):
        return [_norm_param(name, value)]
    m = re.match(r"^depformer_in\.(\d+)\.(.+)$", name)
    if m:
        return [(f"{dep_prefix}.{k}.linear_in.{m.group(2)}", value)
                for k in _slices_using(cfg.depformer_in_schedule, int(m.group(1)))]
    m = re.match(r"^depformer_text_emb\.(.+)$", name)
    if m:
        return [(f"{dep_prefix}.0.{_emb_name(m.group(1))}", value)]
    m = re.match(r"^depformer_emb\.(\d+)\.(.+)$", name)
    if m:
        return [(f"{dep_prefix}.{int(m.group(1)) + 1}.{_emb_name(m.group(2))}", value)]
    m = re.match(r"^linears\.(\d+)\.(.+)$", name)
    if m:
        return [(f"{dep_prefix}.{m.group(1)}.linear_out.{m.group(2)}", value)]
    m = _LAYER.match(name)
    if m:
        which, layer, rest = m.group(1), m.group(2), m.group(3)
        if which == "transformer":
            return [(f"transformer.layers.{layer}.{n}", v)
                    for _, n, v in _map_layer_param(rest, value, 1)]
        schedule = cfg.depformer_schedule
        out = []
        for weight_set, n, v in _map_layer_param(rest, value, max(schedule) + 1):
            slices = range(cfg.dep_q) if weight_set is None else _slices_using(schedule, weight_set)
            out += [(f"{dep_prefix}.{k}.transformer.layers.{layer}.{n}", v) for k in slices]
        return out
    return [(name, value)]


def _emb_name(rest: str) -> str:
    return f"emb.{rest}"


def to_pytorch_names(weights: dict[str, mx.array], cfg: LmConfig, fused: bool = False) -> dict[str, mx.array]:
    """Our (unquantized) weights under Kyutai's PyTorch names; `fused` uses the released
    `in_proj_weight` / `out_proj.weight` form."""
    out: dict[str, mx.array] = {}
    schedule, in_schedule = cfg.depformer_schedule, cfg.depformer_in_schedule
    rms = cfg.norm.startswith("rms")
    first = {j: schedule.index(j) for j in set(schedule)}
    for name, value in weights.items():
        if name.startswith("audio_embs."):
            out["emb." + name[len("audio_embs."):]] = value
            continue
        m = re.match(r"^depformer\.slices\.(\d+)\.(.+)$", name)
        if not m:
            out.update(_to_pytorch_layer(name, value, "transformer", 0, rms))
            continue
        k, rest = int(m.group(1)), m.group(2)
        if rest.startswith("linear_in."):
            if in_schedule.index(in_schedule[k]) == k:
                out[f"depformer_in.{in_schedule[k]}.{rest[len('linear_in.'):]}"] = value
        elif rest.startswith("linear_out."):
            out[f"linears.{k}.{rest[len('linear_out.'):]}"] = value
        elif rest.startswith("emb."):
            base = "depformer_text_emb" if k == 0 else f"depformer_emb.{k - 1}"
            out[f"{base}.{rest[len('emb.'):]}"] = value
        else:
            layer_name = rest[len("transformer."):]
            is_shared = not re.search(r"\.(self_attn|gating)\.", "." + layer_name)
            if is_shared and k != 0:
                continue
            if not is_shared and first[schedule[k]] != k:
                continue
            out.update(_to_pytorch_layer("depformer." + layer_name, value, "depformer", schedule[k], rms,
                                         per_step=cfg.depformer_weights_per_step))
    if fused:
        out = _fuse_attention(out)
    return out


def _to_pytorch_layer(name: str, value: mx.array, which: str, weight_set: int, rms: bool,
                      per_step: bool = False) -> dict[str, mx.array]:
    name = re.sub(r"\.(self_attn|cross_attention)\.(in_proj|out_proj)\.weight$",
                  lambda m: f".{m.group(1)}.{m.group(2)}s.{weight_set}.weight", name)
    if which == "depformer" and per_step:
        name = re.sub(r"\.gating\.", f".gating.{weight_set}.", name)
    if rms and re.search(r"(norm1|norm2|out_norm)\.weight$", name):
        return {name[: -len(".weight")] + ".alpha": value.reshape(1, 1, -1)}
    return {name: value}


def _fuse_attention(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    groups: dict[str, list[tuple[int, mx.array]]] = {}
    for name, value in weights.items():
        m = re.match(r"^(.+\.(?:self_attn|cross_attention))\.(in_proj|out_proj)s\.(\d+)\.weight$", name)
        if m:
            key = f"{m.group(1)}." + ("in_proj_weight" if m.group(2) == "in_proj" else "out_proj.weight")
            groups.setdefault(key, []).append((int(m.group(3)), value))
        else:
            out[name] = value
    for key, parts in groups.items():
        out[key] = mx.concatenate([v for _, v in sorted(parts, key=lambda p: p[0])], axis=0)
    return out
