"""`moshi-mlx quantize` on TTS and STT checkpoints: every module has a group, a TTS model is quantized exactly as
Kyutai's `run_tts -q` quantizes it, and the quantized tiny models load and generate."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import sentencepiece
from mlx.utils import tree_flatten
from moshi_mlx.quantize.quantizer import quantize_checkpoint
from moshi_mlx.quantize.recipes import make_plan, module_group, quantizable_modules

from moshi_mlx import Lm, LmConfig, load_lm
from moshi_mlx.devtools.random_lm import write_random_lm
from moshi_mlx.devtools.tiny_stt import tiny_stt_config
from moshi_mlx.devtools.tiny_tokenizer import write_tiny_tokenizer
from moshi_mlx.devtools.tiny_tts import TTS_0_75B, TTS_1_6B, tiny_tts_config, write_voice
from moshi_mlx.tts.model import TtsModel, quantize_like_kyutai


def tts_config(**overrides) -> LmConfig:
    """The tiny TTS structure with rows of 64, so that groups of 64 fit the temporal and depth layers."""
    values = dict(dim=64, hidden_scale=3, depformer_dim=64, depformer_dim_feedforward=192,
                  depformer_low_rank_embeddings=64)
    config = tiny_tts_config(**values).to_dict()
    config["conditioners"]["control"]["lut"]["dim"] = 64
    return LmConfig.from_dict(config | overrides)


@pytest.mark.parametrize("config", [tts_config(), tiny_stt_config(), LmConfig.from_dict(TTS_1_6B),
                                    LmConfig.from_dict(TTS_0_75B)], ids=["tiny-tts", "tiny-stt", "1.6b", "0.75b"])
def test_every_module_has_a_group(config):
    for path in quantizable_modules(config):
        module_group(path)
    for recipe in ("uniform", "mixed"):
        make_plan(config, 4, recipe=recipe)


@pytest.mark.parametrize("bits", [4, 8])
def test_tts_plan_is_what_kyutais_run_tts_quantizes(bits):
    config = tts_config()
    lm = Lm(config)
    quantize_like_kyutai(lm, bits)
    kyutai = {p for p, m in lm.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    plan = make_plan(config, bits)
    ours = {p for p, spec in plan.items() if spec is not None}
    assert ours == kyutai and len(ours) > 20
    assert {(s.bits, s.group_size) for s in plan.values() if s is not None} == {(bits, 64)}
    kept = {module_group(p) for p, spec in plan.items() if spec is None}
    assert kept == {"embeddings", "text_linear", "temporal.cross_attention", "conditioners"}


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_tiny_tts_loads_and_speaks(tmp_path, bits):
    config = tts_config()
    weights, _ = write_random_lm(tmp_path / "in", config, layout="pytorch-fused", scale=3.0, dtype=mx.bfloat16)
    done = quantize_checkpoint(weights, tmp_path / "out", config, make_plan(config, bits))
    tokenizer = sentencepiece.SentencePieceProcessor(
        model_file=str(write_tiny_tokenizer(tmp_path / "tokenizer.model")))
    voice = write_voice(tmp_path / "voice.safetensors")

    def speak(model: TtsModel) -> list:
        conditions, coef = model.conditions(model.load_voices([voice]), 2.0)
        return model.generator(coef, temp=0.0).generate(model.entries(["Hello there."]), conditions,
                                                         max_steps=40).frames

    quantized = TtsModel(load_lm(done.weights, done.config), tokenizer)
    assert quantized.lm.quantization
    in_memory = TtsModel(load_lm(weights, config), tokenizer)  # bf16, quantized on loading as Kyutai does
    quantize_like_kyutai(in_memory.lm, bits)
    frames = speak(quantized)
    assert len(frames) > 10 and all(f.min() >= 0 for f in frames[-3:])
    assert all((a == b).all() for a, b in zip(frames, speak(in_memory), strict=True))


def test_quantized_tiny_stt_loads(tmp_path):
    config = tiny_stt_config(dim=64, hidden_scale=3)
    weights, _ = write_random_lm(tmp_path / "in", config, layout="pytorch", dtype=mx.bfloat16)
    done = quantize_checkpoint(weights, tmp_path / "out", config, make_plan(config, 4))
    lm = load_lm(done.weights, done.config)
    quantized = [p for p, m in lm.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert any(p.startswith("extra_heads.") for p in quantized) and any("self_attn" in p for p in quantized)
    assert all(mx.isfinite(a).all().item() for _, a in tree_flatten(lm.parameters()) if a.dtype != mx.uint32)
