"""Mimi in MLX: SEANet + transformer + 25 -> 12.5 Hz conv + split RVQ, and back; one 80 ms frame per step.

Loads Kyutai's PyTorch checkpoint (`tokenizer-e351c8d8-checkpoint125.safetensors`) through `sanitize`. The
streaming state is an explicit tree of fixed-shape arrays, so `encode_step` and `decode_step` are pure.
"""

from __future__ import annotations

import re
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .conv import StreamingConv1d, StreamingConvTranspose1d
from .mimi_config import MimiConfig
from .mimi_transformer import MimiTransformer
from .quantizer import USAGE_EPS, SplitQuantizer
from .seanet import SeanetDecoder, SeanetEncoder

_WRAPPERS = re.compile(r"(\.(conv|convtr))+\.(weight|bias)$")
_CODEBOOK = re.compile(r"^quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)$")


class Mimi(nn.Module):
    def __init__(self, cfg: MimiConfig):
        super().__init__()
        self.cfg = cfg
        stride = cfg.resample_stride
        self.encoder = SeanetEncoder(cfg)
        self.encoder_transformer = MimiTransformer(cfg)
        self.downsample = StreamingConv1d(
            cfg.dimension, cfg.dimension, 2 * stride, stride=stride, bias=False, pad_mode="replicate"
        )
        self.quantizer = SplitQuantizer(cfg)
        # Depthwise, as Kyutai's checkpoints were trained (their `upsample_channel_wise_bug`).
        self.upsample = StreamingConvTranspose1d(
            cfg.dimension, cfg.dimension, 2 * stride, stride=stride, groups=cfg.dimension, bias=False
        )
        self.decoder_transformer = MimiTransformer(cfg)
        self.decoder = SeanetDecoder(cfg)

    def init_encoder_state(self, batch: int = 1, dtype: mx.Dtype = mx.float32) -> dict[str, Any]:
        return {
            "seanet": self.encoder.init_state(batch, dtype),
            "transformer": self.encoder_transformer.init_state(batch, dtype),
            "downsample": self.downsample.init_state(batch, dtype),
        }

    def init_decoder_state(self, batch: int = 1, dtype: mx.Dtype = mx.float32) -> dict[str, Any]:
        return {
            "upsample": self.upsample.init_state(batch, dtype),
            "transformer": self.decoder_transformer.init_state(batch, dtype),
            "seanet": self.decoder.init_state(batch, dtype),
        }

    def encode_step(self, pcm: mx.array, state: dict[str, Any]) -> tuple[mx.array, mx.array, dict[str, Any]]:
        """Audio `[B, frame_size]` -> codes `[B, num_codebooks]`, the latent `[B, dimension]` and the new state."""
        dtype = state["downsample"]["previous"].dtype
        x, seanet = self.encoder(pcm.astype(dtype)[..., None], state["seanet"])
        x, transformer = self.encoder_transformer(x, state["transformer"])
        latent, downsample = self.downsample(x, state["downsample"])  # [B, 1, dimension]
        latent = latent[:, 0]
        codes = self.quantizer.encode(latent)
        return codes, latent, {"seanet": seanet, "transformer": transformer, "downsample": downsample}

    def decode_step(self, codes: mx.array, state: dict[str, Any]) -> tuple[mx.array, dict[str, Any]]:
        """Codes `[B, num_codebooks]` -> audio `[B, frame_size]` (float32) and the new state."""
        dtype = state["upsample"].dtype
        latent = self.quantizer.decode(codes).astype(dtype)[:, None]
        x, upsample = self.upsample(latent, state["upsample"])
        x, transformer = self.decoder_transformer(x, state["transformer"])
        pcm, seanet = self.decoder(x, state["seanet"])
        return pcm[..., 0].astype(mx.float32), {"upsample": upsample, "transformer": transformer, "seanet": seanet}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Kyutai's PyTorch names and layouts -> this module's; codebooks formed, unused ones left out."""
        out: dict[str, mx.array] = {}
        used = {"rvq_first": self.cfg.n_q_semantic, "rvq_rest": self.cfg.num_codebooks - self.cfg.n_q_semantic}
        for name, value in weights.items():
            if m := _CODEBOOK.match(name):
                rvq, level, field = m.group(1), int(m.group(2)), m.group(3)
                if field == "embedding_sum" and level < used[rvq]:
                    usage = weights[name.replace("embedding_sum", "cluster_usage")]
                    embedding = value / mx.maximum(usage, USAGE_EPS)[:, None]
                    out[f"quantizer.{rvq}.layers.{level}.embedding"] = embedding
                continue
            if name.startswith("quantizer.") and name.endswith("_proj.weight"):
                out[name] = value[..., 0]  # 1x1 conv -> linear
                continue
            if name.endswith("self_attn.in_proj_weight"):
                name = name.replace("in_proj_weight", "in_proj.weight")
            name = name.replace("_transformer.transformer.", "_transformer.")
            if ".convtr." in name and name.endswith(".weight"):
                # PyTorch [in, out // groups, k] -> [k, out, in // groups].
                value = value.transpose(2, 0, 1) if name.startswith("upsample.") else value.transpose(2, 1, 0)
            elif ".conv." in name and name.endswith(".weight"):
                value = value.transpose(0, 2, 1)  # [out, in, k] -> [out, k, in]
            out[_WRAPPERS.sub(r".\3", name)] = value
        return out
