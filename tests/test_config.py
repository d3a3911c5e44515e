import json

import pytest

from moshi_mlx import LmConfig, MoshiError

KYUTAI_7B = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8, "card": 2048,
    "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "context": 3000, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": 4224,
    "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_causal": True,
    "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 8,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    "moshi_name": "model.safetensors", "mimi_name": "tokenizer.safetensors",
}


def test_7b_json_equals_preset(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(KYUTAI_7B))
    assert LmConfig.from_json(path) == LmConfig.moshi_7b()


def test_7b_derived_sizes():
    cfg = LmConfig.moshi_7b()
    assert cfg.main_transformer().gating_hidden == 11264
    assert cfg.depth_transformer().gating_hidden == 2816
    assert cfg.depformer_schedule == list(range(8))
    assert cfg.max_delay == 1 and cfg.num_codebooks == 17


def test_optional_keys_and_fallbacks():
    cfg = LmConfig.from_dict({
        **KYUTAI_7B, "depformer_weights_per_step_schedule": [0, 1, 1, 2, 2, 2, 3, 3],
        "depformer_low_rank_embeddings": 64, "layer_scale": 0.1,
    })
    del_keys = {k: v for k, v in KYUTAI_7B.items() if k not in ("depformer_layer_scale", "depformer_gating")}
    fallback = LmConfig.from_dict({**del_keys, "layer_scale": 0.5, "gating": "none"})
    assert cfg.depformer_schedule == [0, 1, 1, 2, 2, 2, 3, 3]
    assert cfg.depformer_in_schedule == [0, 1, 1, 2, 2, 2, 3, 3]
    assert fallback.depformer_layer_scale == 0.5
    assert fallback.depth_transformer().gating == "none"


def test_kyutai_gating_width_rule():
    cfg = LmConfig.from_dict({**KYUTAI_7B, "hidden_scale": 4})
    assert cfg.main_transformer().gating_hidden == 21 * 4096 // 8


@pytest.mark.parametrize("change, words", [
    ({"delays": [0, 1]}, "delays"),
    ({"norm": "batch_norm"}, "norm"),
    ({"depformer_weights_per_step_schedule": [0, 1]}, "schedule"),
    ({"causal": False}, "causal"),
    ({"model_type": "stt"}, "model_type stt with dep_q 8"),
    ({"model_type": "hibiki"}, "model_type"),
    ({"depformer_weights_per_step": False, "depformer_weights_per_step_schedule": [0] * 8}, "schedule"),
    ({"conditioners": {"description": {}}, "fuser": {"sum": ["description"]}}, "conditioner description: type"),
    ({"cross_attention": True}, "cross_attention true needs a fuser cross condition"),
    ({"norm_emb": True}, "norm_emb"),
    ({"bias_proj": True}, "bias_proj"),
    ({"depformer_norm": "rms_norm"}, "depformer_norm"),
    ({"kv_repeat": 2}, "kv_repeat"),
    ({"depformer_kv_repeat": 2}, "depformer_kv_repeat"),
    ({"positional_scale": 0.5}, "positional_scale"),
    ({"extra_heads_num_heads": -1}, "extra_heads_num_heads"),
    ({"stt_config": {"audio_delay_seconds": "0.5"}}, "stt_config audio_delay_seconds"),
    ({"mimi_config_name": "mimi.json"}, "mimi_config_name"),
    ({"lora": True}, "lora"),
    ({"text_card_out": 0}, "text_card_out"),
    ({"depformer_dim_feedforward": [4224] * 8}, "depformer_dim_feedforward"),
    ({"positional_embedding": "rope_concat"}, "positional_embedding"),
    ({"gating": "gelu"}, "gating"),
])
def test_bad_configs_are_one_line_errors(change, words):
    with pytest.raises(MoshiError) as e:
        LmConfig.from_dict({**KYUTAI_7B, **change})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_off_values_of_unsupported_options_are_accepted():
    off = {"norm_emb": False, "bias_proj": False, "depformer_norm": None, "kv_repeat": 1, "lora": False,
           "text_card_out": 32000, "extra_heads_num_heads": 0, "fuser": None}
    assert LmConfig.from_dict({**KYUTAI_7B, **off}) == LmConfig.moshi_7b()


def test_left_out_keys_take_lmmodel_defaults():
    """As Kyutai's loader: `LMModel` / `StreamingTransformer` defaults, the depth transformer inheriting."""
    required = ("dim", "text_card", "n_q", "dep_q", "card", "num_heads", "num_layers", "delays", "depformer_dim",
                "depformer_num_heads")
    cfg = LmConfig.from_dict({k: KYUTAI_7B[k] for k in required})
    assert (cfg.norm, cfg.gating, cfg.positional_embedding, cfg.context) == ("layer_norm", "none", "sin", None)
    assert cfg.hidden_scale == 4 and cfg.max_period == 10000 and cfg.layer_scale is None
    assert cfg.depformer_num_layers == 32 and cfg.depformer_pos_emb == "sin"
    assert not cfg.depformer_multi_linear and not cfg.depformer_weights_per_step
    dep = cfg.depth_transformer()
    assert dep.gating == "none" and dep.dim_feedforward == 4 * 1024 and dep.context is None
    with pytest.raises(MoshiError, match="lacks num_layers") as e:
        LmConfig.from_dict({k: KYUTAI_7B[k] for k in required if k != "num_layers"})
    assert "\n" not in str(e.value)


def test_unreadable_config(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(MoshiError, match="cannot read model config"):
        LmConfig.from_json(bad)
