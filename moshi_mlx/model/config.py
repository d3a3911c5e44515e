"""Model configuration in Kyutai's JSON schema."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MoshiError
from .condition_checks import config_problems
from .persona_layout import PERSONAPLEX, persona_problems
from .schema import BOOL, INT, LIST, NUM, OBJECT, STR, BaseConfig, describe, field_problems, is_int, setting
from .stt_checks import MODEL_TYPES, stt_problems

NORMS = ("rms_norm_f32", "rms_norm", "layer_norm", "layer_norm_f32")
GATINGS = ("silu", "none")
POSITIONAL_EMBEDDINGS = ("rope", "sin", "sin_rope", "none")
MAX_DELAY = 1000

# Options of Kyutai's LM (also under a `depformer_` prefix) this port does not implement, with their "off" value.
# (`quantize`, Kyutai's PyTorch int8 flag, is left to the loader: quantization is read off the tensors.)
UNSUPPORTED: dict[str, Any] = {
    "norm_emb": False, "bias_proj": False, "depformer_norm": None, "kv_repeat": 1, "positional_scale": 1.0,
    "skip_self_attn": False, "lora": False, "mimi_config_name": None,
}


@dataclass
class LmConfig(BaseConfig):
    """Kyutai's LM config; `depformer_*` keys left out fall back to the main transformer's values.

    Each field: the 7B's value, its kind and range (the upper bounds are far above any released model and keep
    a typo from asking for terabytes), and in its metadata `required` (Kyutai's `LMModel` cannot do without it),
    `absent` (the value of Kyutai's `LMModel` / `StreamingTransformer` when the key is left out, where it
    differs from the 7B's) or `optional` (left out of the JSON at its "off" value, as in Kyutai's own configs).
    """

    dim: int = setting(4096, INT, 1, 65536, required=True)
    text_card: int = setting(32000, INT, 1, 1 << 20, required=True)
    existing_text_padding_id: int = setting(3, INT, 0, 1 << 20)
    existing_text_end_padding_id: int = setting(0, INT, 0, 1 << 20)
    n_q: int = setting(16, INT, 1, 64, required=True)
    dep_q: int = setting(8, INT, 0, 64, required=True)
    card: int = setting(2048, INT, 1, 1 << 20, required=True)
    num_heads: int = setting(32, INT, 1, 1024, required=True)
    num_layers: int = setting(32, INT, 1, 1024, required=True)
    hidden_scale: float = setting(4.125, NUM, 1e-3, 64, absent=4)
    causal: bool = setting(True, BOOL)
    layer_scale: float | None = setting(None, NUM, 0, 1e6, null=True)
    context: int | None = setting(3000, INT, 1, 1 << 24, null=True, absent=None)
    max_period: float = setting(10000.0, NUM, 1e-6, 1e12)
    gating: str = setting("silu", STR, choices=GATINGS, absent="none")
    norm: str = setting("rms_norm_f32", STR, choices=NORMS, absent="layer_norm")
    positional_embedding: str = setting("rope", STR, choices=POSITIONAL_EMBEDDINGS, absent="sin")
    depformer_dim: int = setting(1024, INT, 1, 65536, required=True)
    depformer_dim_feedforward: int | None = setting(4224, INT, 1, 1 << 20, null=True, absent=None)
    depformer_num_heads: int = setting(16, INT, 1, 1024, required=True)
    depformer_num_layers: int = setting(6, INT, 1, 1024)
    depformer_causal: bool | None = setting(True, BOOL, null=True, absent=None)
    depformer_layer_scale: float | None = setting(None, NUM, 0, 1e6, null=True)
    depformer_multi_linear: bool = setting(True, BOOL, absent=False)
    depformer_context: int | None = setting(8, INT, 1, 1 << 24, null=True, absent=None)
    depformer_max_period: float | None = setting(10000.0, NUM, 1e-6, 1e12, null=True, absent=None)
    depformer_gating: str | None = setting("silu", STR, choices=GATINGS, null=True, absent=None)
    depformer_pos_emb: str = setting("none", STR, choices=POSITIONAL_EMBEDDINGS, absent="sin")
    depformer_weights_per_step: bool = setting(True, BOOL, absent=False)
    depformer_weights_per_step_schedule: list[int] | None = setting(None, LIST, null=True, optional=True)
    depformer_low_rank_embeddings: int | None = setting(None, INT, 1, 65536, null=True, optional=True)
    demux_second_stream: bool = setting(False, BOOL, optional=True)
    delays: list[int] = setting([0] + [0] + [1] * 7 + [0] + [1] * 7, LIST, 0, MAX_DELAY, unit="steps",
                                required=True)
    conditioners: dict | None = setting(None, OBJECT, null=True, optional=True)
    cross_attention: bool = setting(False, BOOL, optional=True)
    # Conditioned models (TTS): the fuser block, text logits of another width, and what the TTS reads.
    fuser: dict | None = setting(None, OBJECT, null=True, optional=True)
    text_card_out: int | None = setting(None, INT, 1, 1 << 20, null=True, optional=True)
    tts_config: dict | None = setting(None, OBJECT, null=True, optional=True)
    model_id: dict | None = setting(None, OBJECT, null=True, optional=True)
    # Speech-to-text (model_type "stt", dep_q 0): voice-activity heads, and the file path's padding (model/stt.py).
    extra_heads_num_heads: int = setting(0, INT, 0, 64, optional=True)
    extra_heads_dim: int = setting(6, INT, 1, 65536, omit=6)
    model_type: str = setting("moshi", STR, choices=(*MODEL_TYPES, PERSONAPLEX), omit="moshi")
    stt_config: dict | None = setting(None, OBJECT, null=True, optional=True)

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LmConfig:
        """Build from Kyutai's JSON dict; keys that are not model settings (e.g. `moshi_name`) are ignored.

        Keys left out take the defaults of Kyutai's `LMModel` (not the 7B's), as Kyutai's loader does; model
        settings this port does not implement raise a one-line `MoshiError` rather than being ignored.
        """
        if not isinstance(d, dict):
            raise MoshiError(f"invalid model config: it holds {describe(d)}, not a JSON object of Kyutai's keys")
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.metadata.get("required") and f.name not in d]
        if missing:
            raise MoshiError(f"invalid model config: it lacks {', '.join(missing)}")
        unsupported = [f"{key} {d[key]!r}" for key in d if _is_unsupported(key, d[key])]
        if isinstance(d.get("depformer_dim_feedforward"), list):
            unsupported.append(f"depformer_dim_feedforward {d['depformer_dim_feedforward']!r}")
        if unsupported:
            raise MoshiError(f"invalid model config: unsupported {'; '.join(unsupported)}")
        values: dict[str, Any] = {f.name: f.metadata["absent"] for f in fields if "absent" in f.metadata}
        values["depformer_num_layers"] = d["num_layers"]
        values["demux_second_stream"] = d.get("demux_second_text_stream", False)
        values.update(cls.known(d))
        if values.get("text_card_out") == values["text_card"]:  # the same width: the default, left out
            values["text_card_out"] = None
        if "depformer_layer_scale" not in d:
            values["depformer_layer_scale"] = values.get("layer_scale")
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

    @classmethod
    def personaplex_7b(cls) -> LmConfig:
        """NVIDIA's PersonaPlex 7B: Moshi's 7B whose depth transformer predicts the user's codebooks too
        (the architecture its loader fixes; see `persona_layout`)."""
        return cls(dep_q=16, model_type=PERSONAPLEX)

    def to_dict(self) -> dict[str, Any]:
        """Kyutai's schema; optional keys at their "off" value are left out, as in Kyutai's own configs."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("optional") and not d[f.name] or d[f.name] == f.metadata.get("omit", ...):
                del d[f.name]
        return d

    def _check(self) -> None:
        # Types and ranges first: the consistency checks and the model's code rely on them.
        problems = field_problems(self)
        if not problems:
            problems = self._inconsistencies()
        if problems:
            raise MoshiError("invalid model config: " + "; ".join(problems))

    def _inconsistencies(self) -> list[str]:
        """What the fields, each valid on its own, get wrong together (or ask of this port that it cannot do)."""
        problems = []
        if len(self.delays) != self.n_q + 1:
            problems.append(f"{len(self.delays)} delays for {self.n_q + 1} streams")
        if self.dep_q > self.n_q:
            problems.append(f"dep_q {self.dep_q} > n_q {self.n_q}")
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
        if schedule is not None and any(not is_int(j) or j < 0 or j >= max(self.dep_q, 1) for j in schedule):
            problems.append(f"depformer_weights_per_step_schedule {schedule!r}: expected whole numbers from 0 "
                            f"to dep_q - 1 ({self.dep_q - 1})")
        elif schedule is not None and len(schedule) != self.dep_q:
            problems.append(f"depformer schedule has {len(schedule)} entries for dep_q {self.dep_q}")
        if not self.causal:
            problems.append("non-causal attention is not supported")
        problems += stt_problems(self.model_type, self.dep_q, self.stt_config)
        problems += persona_problems(self.model_type, self.n_q, self.dep_q)
        if schedule is not None and not self.depformer_weights_per_step:
            problems.append("depformer_weights_per_step_schedule needs depformer_weights_per_step")
        problems += config_problems(self.conditioners, self.fuser, self.cross_attention)
        return problems

    # Derived values.
    @property
    def num_codebooks(self) -> int:
        """Streams fed to the temporal transformer: text + n_q audio."""
        return self.n_q + 1

    @property
    def takes_persona(self) -> bool:
        """NVIDIA's PersonaPlex layout and generation (a role and a voice prompt before the conversation)."""
        return self.model_type == PERSONAPLEX

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def text_out_card(self) -> int:
        """Width of the text logits (`text_card_out` where a config sets it)."""
        return self.text_card_out or self.text_card

    @property
    def depformer_schedule(self) -> list[int]:
        """Weight set used at each depth step."""
        return self._per_step(self.depformer_weights_per_step)

    @property
    def depformer_in_schedule(self) -> list[int]:
        """Index of the `depformer_in` projection used at each depth step."""
        return self._per_step(self.depformer_multi_linear)

    def _per_step(self, per_step: bool) -> list[int]:
        """One set for every depth step, or the schedule's (by default, one set per step)."""
        if not per_step:
            return [0] * self.dep_q
        schedule = self.depformer_weights_per_step_schedule
        return list(range(self.dep_q)) if schedule is None else list(schedule)

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
            cross_attention=self.cross_attention,
        )

    def depth_transformer(self) -> TransformerConfig:
        """The `depformer_*` settings; the norm, and the gating and max period when unset, are the main one's."""
        ff = self.depformer_dim_feedforward
        return dataclasses.replace(
            self.main_transformer(),
            dim=self.depformer_dim, num_heads=self.depformer_num_heads, num_layers=self.depformer_num_layers,
            dim_feedforward=int(self.hidden_scale * self.depformer_dim) if ff is None else ff,
            gating=self.depformer_gating or self.gating, layer_scale=self.depformer_layer_scale,
            positional_embedding=self.depformer_pos_emb, max_period=self.depformer_max_period or self.max_period,
            context=None, cross_attention=False,
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
    cross_attention: bool = False

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
