"""Which module gets which precision: uniform q4/q8 as Kyutai ships them, and Moshi's mixed recipe."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import mlx.nn as nn

from moshi_mlx import Lm, LmConfig, MoshiError

# Kyutai's published files: q4 in groups of 32, q8 in groups of 64.
DEFAULT_GROUP_SIZE = {4: 32, 8: 64}
# Kyutai ships its TTS models in bf16 only; its moshi_mlx `run_tts -q` quantizes the depth transformer and the
# temporal layers' self-attention and MLP, with MLX's default group size, and keeps the rest in bf16.
TTS_GROUPS = ("temporal.attention", "temporal.mlp", "depformer")
TTS_GROUP_SIZE = 64
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int

    def to_dict(self) -> dict[str, int]:
        return {"group_size": self.group_size, "bits": self.bits}

    def bits_per_weight(self) -> float:
        """Storage per weight: the packed bits plus a bf16 scale and bias per group."""
        return self.bits + 32 / self.group_size


Q4 = QuantSpec(4, DEFAULT_GROUP_SIZE[4])
Q8 = QuantSpec(8, DEFAULT_GROUP_SIZE[8])

# Moshi's mixed precision. Measured with benchmarks/quantize_sensitivity.py (README, "Quantize"): per GiB saved
# on the 7B, 4 bits cost least in the temporal MLPs (58 % of the weights), then the depth transformer, then the
# temporal attention; the embedding tables cost most. So only the temporal MLPs take 4 bits.
MIXED: dict[str, QuantSpec] = {
    "embeddings": Q8,
    "text_linear": Q8,
    "temporal.attention": Q8,
    "temporal.mlp": Q4,
    "depformer": Q8,
}
# The TTS parts Moshi lacks, in the mixed recipe: the conditioners run once per text and stay as released.
MIXED_TTS: dict[str, QuantSpec | None] = {"temporal.cross_attention": Q8, "conditioners": None}
RECIPES = ("uniform", "mixed")

_GROUPS = (
    ("embeddings", r"^(text_emb(\.out\d)?|audio_embs\.\d+)$"),  # with TTS's second text stream projections
    ("text_linear", r"^(text_linear|extra_heads\.\d+)$"),  # the text head, and STT's voice-activity heads
    ("temporal.attention", r"^transformer\.layers\.\d+\.self_attn\."),
    ("temporal.cross_attention", r"^transformer\.layers\.\d+\.cross_attention\."),
    ("temporal.mlp", r"^transformer\.layers\.\d+\.(gating|linear1|linear2)"),
    ("depformer", r"^depformer\."),  # its low-rank embeddings too, as Kyutai's nn.quantize(depformer) does
    ("conditioners", r"^condition_provider\."),
)


def module_group(path: str) -> str:
    """The part of Moshi a quantizable module belongs to (a key of `MIXED`)."""
    for group, pattern in _GROUPS:
        if re.match(pattern, path):
            return group
    raise ValueError(f"no quantization group for module {path!r}")


def quantizable_modules(config: LmConfig) -> dict[str, tuple[int, ...]]:
    """Every Linear and Embedding of the model (module path -> weight shape), from a lazy model: nothing is
    allocated, even for the 7B."""
    lm = Lm(config)
    return {path: tuple(m.weight.shape) for path, m in lm.named_modules() if hasattr(m, "to_quantized")}


def make_plan(
    config: LmConfig,
    bits: int = 4,
    group_size: int | None = None,
    recipe: str = "uniform",
    groups: Mapping[str, QuantSpec | None] | None = None,
) -> dict[str, QuantSpec | None]:
    """Precision of every quantizable module (None: kept in bf16).

    `uniform` quantizes every Linear and Embedding at `bits` (Kyutai's group size unless `group_size`), as
    Kyutai's q4/q8 files; for a TTS model, only `TTS_GROUPS` in groups of 64, as Kyutai's `run_tts -q`;
    `mixed` follows `MIXED`. `groups` maps group names to specs (or None for bf16) and
    overrides the recipe, for measuring one group at a time.
    """
    if recipe not in RECIPES:
        raise MoshiError(f"unknown recipe {recipe!r}: use {' or '.join(RECIPES)}")
    tts = config.tts_config is not None
    if recipe == "uniform":
        uniform = QuantSpec(bits, group_size or (TTS_GROUP_SIZE if tts else DEFAULT_GROUP_SIZE[bits]))
        by_group: dict[str, QuantSpec | None] = {
            group: uniform if not tts or group in TTS_GROUPS else None for group, _ in _GROUPS}
    else:
        by_group = {g: s and QuantSpec(s.bits, group_size or s.group_size) for g, s in {**MIXED, **MIXED_TTS}.items()}
    for spec in by_group.values():
        if spec is not None:
            check_quantizable(spec)
    by_group.update(groups or {})
    plan = {}
    for path, shape in quantizable_modules(config).items():
        spec = by_group[module_group(path)]
        # A row that does not split into whole groups cannot be quantized (tiny models only; the 7B always can).
        plan[path] = spec if spec is not None and shape[-1] % spec.group_size == 0 else None
    return plan


def quantization_block(plan: Mapping[str, QuantSpec | None]) -> dict:
    """mlx-lm's `quantization` config entry: the most common precision, then per-module exceptions
    (`{"group_size", "bits"}`, or `false` for a module left unquantized)."""
    specs = [s for s in plan.values() if s is not None]
    if not specs:
        return {}
    main = max(set(specs), key=specs.count)
    block: dict = main.to_dict()
    for path in sorted(plan):
        spec = plan[path]
        if spec != main:
            block[path] = spec.to_dict() if spec is not None else False
    return block


def describe(plan: Mapping[str, QuantSpec | None]) -> str:
    """'q4', 'q8', 'q4 g64', or 'mixed' for a plan."""
    specs = {s for s in plan.values() if s is not None}
    if len(specs) != 1:
        return "mixed" if specs else "bf16"
    (spec,) = specs
    default = DEFAULT_GROUP_SIZE.get(spec.bits)
    return f"q{spec.bits}" + ("" if spec.group_size == default else f" g{spec.group_size}")


def file_tag(plan: Mapping[str, QuantSpec | None]) -> str:
    """The `*` of `model.*.safetensors`: q4, q8 or mixed."""
    name = describe(plan)
    return name.split()[0]


def check_quantizable(spec: QuantSpec) -> None:
    if spec.bits not in DEFAULT_GROUP_SIZE:
        raise MoshiError(f"unsupported bits {spec.bits}: use 4 or 8")
    if spec.group_size not in GROUP_SIZES:
        raise MoshiError(f"unsupported group size {spec.group_size}: use {', '.join(map(str, GROUP_SIZES))}")


def quantize_model(lm: nn.Module, plan: Mapping[str, QuantSpec | None]) -> None:
    """Quantize a loaded model in place as the plan says (for measurements without files)."""
    nn.quantize(lm, class_predicate=lambda p, m: plan[p].to_dict() if plan.get(p) else False)
