"""Each command takes the models it can run and names the right command for the others, in one line."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from moshi_mlx.app import cli

from moshi_mlx.devtools.random_lm import tiny_config, tiny_persona_config
from moshi_mlx.devtools.tiny_stt import tiny_stt_config, write_tiny_stt
from moshi_mlx.devtools.tiny_tts import write_tiny_tts
from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.kinds import model_kind


def test_the_kind_of_each_tiny_model(tmp_path, mimi_weights):
    tts = write_tiny_tts(tmp_path / "tts", mimi_weights=mimi_weights)
    assert model_kind(tiny_config()) == "conversation"
    assert model_kind(tiny_persona_config()) == "conversation"
    assert model_kind(tiny_stt_config()) == "stt"
    assert model_kind(LmConfig.from_json(tts.config)) == "tts"


@pytest.fixture(scope="module")
def models(tmp_path_factory, mimi_weights):
    root = tmp_path_factory.mktemp("kinds")
    stt = write_tiny_stt(root / "stt", mimi_weights=mimi_weights)
    tts = write_tiny_tts(root / "tts", mimi_weights=mimi_weights)
    args = {name: ["--moshi-weights", str(m.moshi_weights), "--config", str(m.config),
                   "--mimi-weights", str(m.mimi_weights), "--tokenizer", str(m.tokenizer)]
            for name, m in (("stt", stt), ("tts", tts))}
    wav = root / "in.wav"
    soundfile.write(wav, np.zeros(24000, np.float32), 24000)
    return args, wav


@pytest.mark.parametrize(("command", "model", "right"), [
    ("run", "stt", "transcribe"), ("run", "tts", "say"), ("chat", "stt", "transcribe"), ("chat", "tts", "say"),
    ("transcribe", "tts", "say"),
])
def test_a_model_for_another_command_is_refused_in_one_line(models, tmp_path, capsys, request, command, model,
                                                             right):
    args, wav = models
    if command == "chat":  # devices are checked before the model: give it some
        request.getfixturevalue("virtual_audio")
    out = tmp_path / "out.wav"
    argv = {"run": ["run", str(wav), "--out", str(out)], "chat": ["chat"], "transcribe": ["transcribe", str(wav)]}
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv[command] + args[model])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert f"`moshi-mlx {right}`" in err[0] and not out.exists()
