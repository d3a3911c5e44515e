"""Model configuration in Kyutai's JSON schema."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MoshiError

NORMS = ("rms_norm_f32", "rms_norm", "layer_norm", "layer_norm_f32")
GATINGS = ("silu", "none")
POSITIONAL_EMBEDDINGS = ("rope", "sin", "sin_rope", "none")
OPTIONAL_KEYS = (
    "depformer_weights_per_step_schedule", "depformer_low_rank_embeddings", "demux_second_stream",
    "conditioners", "cross_attention",
)
# Keys Kyutai's `LMModel` cannot do without (or that no Moshi config leaves out).
REQUIRED_KEYS = (
    "dim", "text_card", "n_q", "dep_q", "card", "num_heads", "num_layers", "delays", "depformer_dim",
    "depformer_num_heads",
)
# Kyutai's `LMModel` / `StreamingTransformer` defaults where they differ from the 7B's.
PYTORCH_DEFAULTS: dict[str, Any] = {
    "hidden_scale": 4,
    "context": None,
    "gating": "none",
    "norm": "layer_norm",
    "positional_embedding": "sin",
    "layer_scale": None,
    "depformer_dim_feedforward": None,
    "depformer_causal": None,
    "depformer_context": None,
    "depformer_max_period": None,
    "depformer_gating": None,
    "depformer_pos_emb": "sin",
    "depformer_multi_linear": False,
    "depformer_weights_per_step": False,
}
# Types and ranges of Kyutai's schema: (kind, smallest, largest, may be null). The upper bounds are far above any
# released model (the 7B: dim 4096, 32 layers) and keep a typo from asking for terabytes.
_INT, _NUM, _BOOL, _STR = "whole number", "number", "true or false", "string"
SCHEMA: dict[str, tuple[str, float | None, float | None, bool]] = {
    "dim": (_INT, 1, 65536, False),
    "text_card": (_INT, 1, 1 << 20, False),
    "existing_text_padding_id": (_INT, 0, 1 << 20, False),
    "existing_text_end_padding_id": (_INT, 0, 1 << 20, False),
    "n_q": (_INT, 1, 64, False),
    "dep_q": (_INT, 0, 64, False),
    "card": (_INT, 1, 1 << 20, False),
    "num_heads": (_INT, 1, 1024, False),
    "num_layers": (_INT, 1, 1024, False),
    "hidden_scale": (_NUM, 1e-3, 64, False),
    "causal": (_BOOL, None, None, False),
    "layer_scale": (_NUM, 0, 1e6, True),
    "context": (_INT, 1, 1 << 24, True),
    "max_period": (_NUM, 1e-6, 1e12, False),
    "gating": (_STR, None, None, False),
    "norm": (_STR, None, None, False),
    "positional_embedding": (_STR, None, None, False),
    "depformer_dim": (_INT, 1, 65536, False),
    "depformer_dim_feedforward": (_INT, 1, 1 << 20, True),
    "depformer_num_heads": (_INT, 1, 1024, False),
    "depformer_num_layers": (_INT, 1, 1024, False),
    "depformer_causal": (_BOOL, None, None, True),
    "depformer_layer_scale": (_NUM, 0, 1e6, True),
    "depformer_multi_linear": (_BOOL, None, None, False),
    "depformer_context": (_INT, 1, 1 << 24, True),
    "depformer_max_period": (_NUM, 1e-6, 1e12, True),
    "depformer_gating": (_STR, None, None, True),
    "depformer_pos_emb": (_STR, None, None, False),
    "depformer_weights_per_step": (_BOOL, None, None, False),
    "depformer_low_rank_embeddings": (_INT, 1, 65536, True),
    "demux_second_stream": (_BOOL, None, None, False),
    "cross_attention": (_BOOL, None, None, False),
}
MAX_DELAY = 1000
CHOICES = {"norm": NORMS, "gating": GATINGS, "depformer_gating": GATINGS, "positional_embedding":
           POSITIONAL_EMBEDDINGS, "depformer_pos_emb": POSITIONAL_EMBEDDINGS}

# Options of Kyutai's LM (also under a `depformer_` prefix) this port does not implement, with their "off" value.
# (`quantize`, Kyutai's PyTorch int8 flag, is left to the loader: quantization is read off the tensors.)
UNSUPPORTED: dict[str, Any] = {
    "norm_emb": False, "bias_proj": False, "depformer_norm": None, "kv_repeat": 1, "positional_scale": 1.0,
    "extra_heads_num_heads": 0, "skip_self_attn": False, "lora": False, "fuser": None,
}


@dataclass
class LmConfig:
    """Kyutai's LM config; `depformer_*` keys left out fall back to the main transformer's values."""

    dim: int = 4096
    text_card: int = 32000
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    causal: bool = True
    layer_scale: float | None = None
    context: int | None = 3000
    max_period: float = 10000.0
    gating: str = "silu"
    norm: str = "rms_norm_f32"
    positional_embedding: str = "rope"
    depformer_dim: int = 1024
    depformer_dim_feedforward: int | None = 4224
    depformer_num_heads: int = 16
    depformer_num_layers: int = 6
    depformer_causal: bool | None = True
    depformer_layer_scale: float | None = None
    depformer_multi_linear: bool = True
    depformer_context: int | None = 8
    depformer_max_period: float | None = 10000.0
    depformer_gating: str | None = "silu"
    depformer_pos_emb: str = "none"
    depformer_weights_per_step: bool = True
    depformer_weights_per_step_schedule: list[int] | None = None
    depformer_low_rank_embeddings: int | None = None
    demux_second_stream: bool = False
    delays: list[int] = field(default_factory=lambda: [0] + [0] + [1] * 7 + [0] + [1] * 7)
    conditioners: dict | None = None
    cross_attention: bool = False

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LmConfig:
        """Build from Kyutai's JSON dict; keys that are not model settings (e.g. `moshi_name`) are ignored.

        Keys left out take the defaults of Kyutai's `LMModel` (not the 7B's), as Kyutai's loader does; model
        settings this port does not implement raise a one-line `MoshiError` rather than being ignored.
        """
        if not isinstance(d, dict):
            raise MoshiError(f"invalid model config: it holds {_describe(d)}, not a JSON object of Kyutai's keys")
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise MoshiError(f"invalid model config: it lacks {', '.join(missing)}")
        unsupported = [f"{key} {d[key]!r}" for key in d if _is_unsupported(key, d[key])]
        if d.get("text_card_out") not in (None, d["text_card"]):
            unsupported.append(f"text_card_out {d['text_card_out']!r}")
        if isinstance(d.get("depformer_dim_feedforward"), list):
            unsupported.append(f"depformer_dim_feedforward {d['depformer_dim_feedforward']!r}")
        if unsupported:
            raise MoshiError(f"invalid model config: unsupported {'; '.join(unsupported)}")
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            **PYTORCH_DEFAULTS,
            "depformer_num_layers": d["num_layers"],
            "demux_second_stream": d.get("demux_second_text_stream", False),
        }
        values.update({k: v for k, v in d.items() if k in names})
        if "depformer_layer_scale" not in d:
            values["depformer_layer_scale"] = values["layer_scale"]
        try:
            return cls(**values)
        except TypeError as e:
            raise MoshiError(f"invalid model config: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> LmConfig:
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise MoshiError(f"cannot read model config {path}: {e}") from None
        try:
            return cls.from_dict(d)
        except MoshiError as e:
            raise MoshiError(str(e).replace("invalid model config:", f"invalid model config {path}:", 1)) from None

    @classmethod
    def moshi_7b(cls) -> LmConfig:
        """The 7B config of Kyutai's moshiko/moshika releases."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """Kyutai's schema; optional keys at their "off" value are left out, as in Kyutai's own configs."""
        d = dataclasses.asdict(self)
        for key in OPTIONAL_KEYS:
            if not d[key]:
                del d[key]
        return d

    def _check(self) -> None:
        _check_schema(self)
        problems = []
        if len(self.delays) != self.n_q + 1:
            problems.append(f"{len(self.delays)} delays for {self.n_q + 1} streams")
        if self.dep_q > self.n_q:
            problems.append(f"dep_q {self.dep_q} > n_q {self.n_q}")
        for key in ("norm",):
            if getattr(self, key) not in NORMS:
                problems.append(f"unknown {key} {getattr(self, key)!r}")
        for key in ("gating", "depformer_gating"):
            value = getattr(self, key)
            if value is not None and value not in GATINGS:
                problems.append(f"unsupported {key} {value!r}")
        for key in ("positional_embedding", "depformer_pos_emb"):
            if getattr(self, key) not in POSITIONAL_EMBEDDINGS:
                problems.append(f"unsupported {key} {getattr(self, key)!r}")
        for prefix, dim, heads in (("", self.dim, self.num_heads), ("depformer_", self.depformer_dim,
                                                                     self.depformer_num_heads)):
            if dim % heads:
                problems.append(f"{prefix}dim {dim} is not divisible by {prefix}num_heads {heads}")
            elif (dim // heads) % 2 and ("rope" in self.positional_embedding if not prefix
                                        else "rope" in self.depformer_pos_emb):
                problems.append(f"{prefix}dim / {prefix}num_heads = {dim // heads} is odd: rotary embeddings "
                                "rotate pairs")
        if int(self.hidden_scale * self.dim) < 3:
            problems.append(f"hidden_scale {self.hidden_scale} x dim {self.dim} leaves the MLP no width")
        for key in ("existing_text_padding_id", "existing_text_end_padding_id"):
            if getattr(self, key) >= self.text_card:
                problems.append(f"{key} {getattr(self, key)} is not below text_card {self.text_card}")
        schedule = self.depformer_weights_per_step_schedule
        if schedule is not None and any(_not_int(j) or j < 0 or j >= max(self.dep_q, 1) for j in schedule):
            problems.append(f"depformer_weights_per_step_schedule {schedule!r}: expected whole numbers from 0 "
                            f"to dep_q - 1 ({self.dep_q - 1})")
        elif schedule is not None and len(schedule) != self.dep_q:
            problems.append(f"depformer schedule has {len(schedule)} entries for dep_q {self.dep_q}")
        if not self.causal:
            problems.append("non-causal attention is not supported")
        if self.dep_q < 1:
            problems.append("dep_q 0 (no depth transformer) is not supported")
        if schedule is not None and not self.depformer_weights_per_step:
            problems.append("depformer_weights_per_step_schedule needs depformer_weights_per_step")
        if self.demux_second_stream:
            problems.append("demux_second_stream (two text streams) is not supported")
        if self.conditioners or self.cross_attention:
            problems.append("conditioned / cross-attention models are not supported")
        if problems:
            raise MoshiError("invalid model config: " + "; ".join(problems))

    # Derived values.
    @property
    def num_codebooks(self) -> int:
        """Streams fed to the temporal transformer: text + n_q audio."""
        return self.n_q + 1

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def depformer_schedule(self) -> list[int]:
        """Weight set used at each depth step."""
        if not self.depformer_weights_per_step:
            return [0] * self.dep_q
        if self.depformer_weights_per_step_schedule is not None:
            return list(self.depformer_weights_per_step_schedule)
        return list(range(self.dep_q))

    @property
    def depformer_in_schedule(self) -> list[int]:
        """Index of the `depformer_in` projection used at each depth step."""
        if not self.depformer_multi_linear:
            return [0] * self.dep_q
        if self.depformer_weights_per_step_schedule is not None:
            return list(self.depformer_weights_per_step_schedule)
        return list(range(self.dep_q))

    def main_transformer(self) -> TransformerConfig:
        return TransformerConfig(
            dim=self.dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dim_feedforward=int(self.hidden_scale * self.dim),
            gating=self.gating,
            norm=self.norm,
            layer_scale=self.layer_scale,
            positional_embedding=self.positional_embedding,
            max_period=self.max_period,
            context=self.context,
        )

    def depth_transformer(self) -> TransformerConfig:
        ff = self.depformer_dim_feedforward
        if ff is None:
            ff = int(self.hidden_scale * self.depformer_dim)
        return TransformerConfig(
            dim=self.depformer_dim,
            num_heads=self.depformer_num_heads,
            num_layers=self.depformer_num_layers,
            dim_feedforward=ff,
            gating=self.depformer_gating or self.gating,
            norm=self.norm,
            layer_scale=self.depformer_layer_scale,
            positional_embedding=self.depformer_pos_emb,
            max_period=self.depformer_max_period or self.max_period,
            context=None,
        )


@dataclass
class TransformerConfig:
    dim: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    gating: str
    norm: str
    layer_scale: float | None
    positional_embedding: str
    max_period: float
    context: int | None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def gating_hidden(self) -> int:
        """Hidden width of the gated MLP, as Kyutai's ActivationGating sizes it."""
        if self.dim_feedforward == 4 * self.dim:
            return (21 * self.dim) // 8
        return (2 * self.dim_feedforward) // 3


def _is_unsupported(key: str, value: Any) -> bool:
    option = key if key in UNSUPPORTED else key.removeprefix("depformer_")
    return option in UNSUPPORTED and value != UNSUPPORTED[option]


def _describe(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({value!r})" if not isinstance(value, str) \
        else f"a string ({value!r})"


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _check_value(key: str, value: Any, kind: str, lo: float | None, hi: float | None, nullable: bool) -> str | None:
    """None when `value` fits; else what is wrong, naming the key, the value and what is expected."""
    if lo is None:
        expected = kind if kind == _BOOL else f"a {kind}"
    else:
        expected = f"a {kind} from {lo:g} to {hi:g}" if kind == _NUM else f"a {kind} from {lo} to {hi}"
    expected += " or null" if nullable else ""
    if value is None:
        return None if nullable else f"{key} is null: expected {expected}"
    if kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _STR:
        ok = isinstance(value, str)
    elif kind == _INT:
        ok = not _not_int(value)
    else:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and lo is not None:
        ok = lo <= value <= hi
    return None if ok else f"{key} {value!r}: expected {expected}"


def _check_schema(cfg: LmConfig) -> None:
    """Types and ranges first: the consistency checks and the model's code rely on them."""
    problems = [p for key, rule in SCHEMA.items()
                if key not in CHOICES and (p := _check_value(key, getattr(cfg, key), *rule))]
    for key, choices in CHOICES.items():
        value = getattr(cfg, key)
        if not (value is None and SCHEMA[key][3]) and not (isinstance(value, str) and value in choices):
            shown = "is null" if value is None else repr(value)
            problems.append(f"{key} {shown}: expected one of {', '.join(choices)}")
    for key in ("delays", "depformer_weights_per_step_schedule"):
        value = getattr(cfg, key)
        if not (value is None and key != "delays") and not isinstance(value, list):
            problems.append(f"{key} {value!r}: expected a list of whole numbers")
    if isinstance(cfg.delays, list):
        bad = [d for d in cfg.delays if _not_int(d) or not 0 <= d <= MAX_DELAY]
        if bad:
            problems.append(f"delays {cfg.delays!r}: expected whole numbers from 0 to {MAX_DELAY} (steps), "
                            f"not {bad[0]!r}")
    if cfg.conditioners is not None and not isinstance(cfg.conditioners, dict):
        problems.append(f"conditioners {cfg.conditioners!r}: expected an object or null")
    if problems:
        raise MoshiError("invalid model config: " + "; ".join(problems))
