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
    ({"demux_second_stream": True}, "demux"),
])
def test_bad_configs_are_one_line_errors(change, words):
    with pytest.raises(MoshiError) as e:
        LmConfig.from_dict({**KYUTAI_7B, **change})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unreadable_config(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(MoshiError, match="cannot read model config"):
        LmConfig.from_json(bad)
