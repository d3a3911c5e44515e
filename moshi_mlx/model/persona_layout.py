"""NVIDIA's PersonaPlex layout: Moshi's 7B whose depth transformer also predicts the user's 8 codebooks.

Read in NVIDIA's `personaplex` (commit 3428dfd), `moshi/moshi/models/loaders.py`: the architecture is fixed in
the loader (`_lm_kwargs` with `dep_q` 16), not read from the repo's config.json; a checkpoint with 8 depth steps is
expanded to 16 by copying steps 0..7 to 8..15.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
from mlx.utils import tree_flatten

from ..errors import MoshiError

if TYPE_CHECKING:
    from .config import LmConfig

PERSONAPLEX = "personaplex"  # our `model_type` for NVIDIA's layout and generation semantics
MOSHI_STREAMS = 8  # NVIDIA's AUDIO_TOKENS_PER_STREAM: Moshi's codebooks, then the user's
DEPTH_STEPS = 16
# The per-step groups NVIDIA's loader copies from step k to k + 8 when a checkpoint lacks them.
_COPIED = ("gating", "linears", "depformer_in", "depformer_emb")
_DEPTH_ATTN = re.compile(r"^depformer\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)$")


def persona_problems(model_type: str, n_q: int, dep_q: int) -> list[str]:
    """What keeps a config from being PersonaPlex's layout (empty when it fits or is not PersonaPlex)."""
    if model_type != PERSONAPLEX:
        return []
    if n_q != 2 * MOSHI_STREAMS or dep_q != n_q:
        return [f"model_type {PERSONAPLEX} needs n_q {2 * MOSHI_STREAMS} and dep_q {2 * MOSHI_STREAMS} (Moshi's "
                f"and the user's codebooks, all predicted), got n_q {n_q} and dep_q {dep_q}"]
    return []


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise MoshiError(f"cannot read {path} as safetensors: {e}") from None
    return {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}


def depth_steps_in(shapes: dict[str, tuple[int, ...]]) -> int:
    """Depth steps a checkpoint holds weights for: its `linears.{k}` (PyTorch) or `depformer.slices.{k}` (MLX)."""
    steps = {int(m.group(1)) for n in shapes for m in [re.match(r"^(?:linears|depformer\.slices)\.(\d+)\.", n)] if m}
    return max(steps) + 1 if steps else 0


def config_from_checkpoint(path: str | Path) -> LmConfig:
    """PersonaPlex's config for a checkpoint that comes without one (`nvidia/personaplex-7b-v1`,
    `kyutai/personaplex-rl-seamless`): NVIDIA's fixed architecture, checked against the file's tensors."""
    from .config import LmConfig
    from .lm import Lm
    from .pytorch_names import to_pytorch_names

    shapes = read_shapes(path)
    cfg = LmConfig.personaplex_7b()
    steps = depth_steps_in(shapes)
    if steps not in (MOSHI_STREAMS, DEPTH_STEPS):
        raise MoshiError(f"{Path(path).name} is not a PersonaPlex checkpoint: it has {steps} depth steps, "
                         f"expected {DEPTH_STEPS} (or {MOSHI_STREAMS}, which NVIDIA's loader expands)")
    lazy = dict(tree_flatten(Lm(cfg).parameters()))
    expected = {n: tuple(v.shape) for n, v in to_pytorch_names(lazy, cfg, fused=True).items()}
    if not any(n.startswith("emb.") for n in shapes):
        expected = {n: tuple(v.shape) for n, v in lazy.items()}
    quantized = any(n.endswith(".scales") for n in shapes)  # packed shapes: the strict loader checks them
    for name, shape in ([] if quantized else shapes.items()):
        want = expected.get(name)
        if want is not None and want != shape and not _DEPTH_ATTN.match(name):
            raise MoshiError(f"{Path(path).name} is not PersonaPlex's 7B: tensor '{name}' has shape {shape}, "
                             f"expected {want}")
    return cfg


def checkpoint_preset(path: str | Path) -> LmConfig:
    """The 7B config of a checkpoint that comes without a model config: PersonaPlex's when its depth transformer
    has 16 steps (checked against the file), else Moshi's."""
    from .config import LmConfig

    if depth_steps_in(read_shapes(path)) == DEPTH_STEPS:
        return config_from_checkpoint(path)
    return LmConfig.moshi_7b()


def is_model_config(d: object) -> bool:
    """Whether a repo's config.json is meant as a model config: it names one of the keys Kyutai's `LMModel`
    requires (NVIDIA's PersonaPlex repos ship a config.json that is not one)."""
    from .config import LmConfig

    required = {f.name for f in dataclasses.fields(LmConfig) if f.metadata.get("required")}
    return isinstance(d, dict) and bool(required & set(d))


def expand_depth_steps(weights: dict[str, mx.array], cfg: LmConfig) -> dict[str, mx.array]:
    """NVIDIA's loader patches for a PyTorch checkpoint with 8 depth steps: the fused depth attention doubled
    (step k + 8 takes step k's projections) and the missing per-step tensors of steps 8..15 copied from 0..7."""
    if depth_steps_in({n: () for n in weights}) != MOSHI_STREAMS or cfg.dep_q != DEPTH_STEPS:
        return weights
    out = dict(weights)
    for name, value in weights.items():
        if _DEPTH_ATTN.match(name):
            out[name] = mx.concatenate([value, value], axis=0)
        m = re.match(rf"^(.*?\b(?:{'|'.join(_COPIED)}))\.(\d+)\.(.+)$", name)
        if m and int(m.group(2)) < MOSHI_STREAMS:
            copy = f"{m.group(1)}.{int(m.group(2)) + MOSHI_STREAMS}.{m.group(3)}"
            if copy not in weights and _is_depth_param(copy, cfg):
                out[copy] = value
    missing = [f"depformer_emb.{k}.weight" for k in range(cfg.dep_q - 1) if f"depformer_emb.{k}.weight" not in out]
    if missing:
        # NVIDIA's loader leaves it unset (and fails); its copies give steps 8..15 only.
        raise MoshiError(f"this 8-step checkpoint lacks '{missing[0]}', which NVIDIA's expansion to 16 steps "
                         "does not provide: not a PersonaPlex checkpoint")
    return out


def _is_depth_param(name: str, cfg: LmConfig) -> bool:
    """Whether NVIDIA's 16-step model has this tensor (depformer_emb stops at dep_q - 2)."""
    m = re.match(r"^depformer_emb\.(\d+)\.", name)
    return m is None or int(m.group(1)) < cfg.dep_q - 1
