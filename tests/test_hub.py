"""Model-file resolution against a real Hugging Face cache layout, offline (no test touches the network)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import RefusingHub

from moshi_mlx import MoshiError
from moshi_mlx.devtools.random_lm import tiny_config
from moshi_mlx.hub import default_repo, normalize_quant, repo_quant, resolve_files

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(hf_home, repo, files):
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<revision>/<file>."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    return snapshot


def resolve_offline(hf_home, endpoint=None, **kwargs):
    code = (
        "import json, sys\n"
        "from moshi_mlx import MoshiError\n"
        "from moshi_mlx.hub import resolve_files\n"
        "try:\n"
        f"    f = resolve_files(**{kwargs!r})\n"
        "    print(json.dumps({'moshi': str(f.moshi_weights), 'mimi': str(f.mimi_weights),\n"
        "                      'tokenizer': str(f.tokenizer), 'dim': f.config.dim, 'repo': f.repo}))\n"
        "except MoshiError as e:\n"
        "    print('ERROR ' + str(e))\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    if endpoint is not None:  # not told it is offline: the hub at `endpoint` is down
        env.pop("HF_HUB_OFFLINE")
        env["HF_ENDPOINT"] = endpoint
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cached_kyutai_repo_resolves_offline(tmp_path):
    files = {"model.q8.safetensors": b"w", "tokenizer-e351c8d8-checkpoint125.safetensors": b"m",
             "tokenizer_spm_32k_3.model": b"t"}
    snapshot = cache_repo(tmp_path, "kyutai/moshika-mlx-q8", files)
    got = json.loads(resolve_offline(tmp_path, voice="moshika", quant="8"))
    assert got["moshi"] == str(snapshot / "model.q8.safetensors")
    assert got["mimi"] == str(snapshot / "tokenizer-e351c8d8-checkpoint125.safetensors")
    assert got["tokenizer"] == str(snapshot / "tokenizer_spm_32k_3.model")
    assert got["dim"] == 4096 and got["repo"] == "kyutai/moshika-mlx-q8"


def test_cached_files_need_no_network(tmp_path):
    """Downloaded once, then offline without HF_HUB_OFFLINE (a laptop on a plane): no request, no retries."""
    files = {"model.q4.safetensors": b"w", "tokenizer-e351c8d8-checkpoint125.safetensors": b"m",
             "tokenizer_spm_32k_3.model": b"t"}
    snapshot = cache_repo(tmp_path, "kyutai/moshiko-mlx-q4", files)
    # Kyutai's MLX repos have no config.json: the cache records its absence when `download` asks for it.
    no_exist = snapshot.parent.parent / ".no_exist" / REVISION
    no_exist.mkdir(parents=True)
    (no_exist / "config.json").touch()
    hub = RefusingHub()
    try:
        got = json.loads(resolve_offline(tmp_path, endpoint=hub.url, quant="4"))
    finally:
        hub.server.close()
    assert got["moshi"] == str(snapshot / "model.q4.safetensors") and got["dim"] == 4096
    assert hub.connections == 0


def test_repo_config_that_is_not_json_is_one_line(tmp_path):
    cache_repo(tmp_path, "someone/broken", {"config.json": b"{not json", "model.q4.safetensors": b"w"})
    out = resolve_offline(tmp_path, hf_repo="someone/broken")
    assert out.startswith("ERROR cannot read config.json of someone/broken: ") and "--config" in out


def test_a_folder_given_as_a_file_is_named_so(tmp_path):
    with pytest.raises(MoshiError, match=f"Moshi weights {tmp_path} is a folder: give the file itself"):
        resolve_files(moshi_weights=tmp_path, mimi_weights=tmp_path, tokenizer=tmp_path)


def test_repo_config_names_the_files(tmp_path):
    config = {**tiny_config().to_dict(), "moshi_name": "lm.safetensors", "mimi_name": "mimi.safetensors",
              "tokenizer_name": "text.model"}
    files = {"config.json": json.dumps(config).encode(), "lm.safetensors": b"w",
             "mimi.safetensors": b"m", "text.model": b"t"}
    snapshot = cache_repo(tmp_path, "someone/tiny-moshi", files)
    got = json.loads(resolve_offline(tmp_path, hf_repo="someone/tiny-moshi"))
    assert got["moshi"] == str(snapshot / "lm.safetensors") and got["dim"] == 32


def test_missing_file_offline_is_one_line_naming_the_download_command(tmp_path):
    cache_repo(tmp_path, "kyutai/moshiko-mlx-q4", {"model.q4.safetensors": b"w"})
    out = resolve_offline(tmp_path)
    assert out.startswith("ERROR ") and "\n" not in out
    assert "tokenizer-e351c8d8-checkpoint125.safetensors" in out
    assert "moshi-mlx download --hf-repo kyutai/moshiko-mlx-q4 -q 4" in out


def test_local_paths_need_no_repo(tmp_path):
    for name in ("lm.safetensors", "mimi.safetensors", "tok.model"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    files = resolve_files(
        moshi_weights=tmp_path / "lm.safetensors", mimi_weights=tmp_path / "mimi.safetensors",
        tokenizer=tmp_path / "tok.model", config=tmp_path / "config.json",
    )
    assert files.repo is None and files.config.dim == 32
    with pytest.raises(MoshiError, match="Mimi weights not found"):
        resolve_files(moshi_weights=tmp_path / "lm.safetensors", mimi_weights=tmp_path / "none",
                      tokenizer=tmp_path / "tok.model", config=tmp_path / "config.json")


def test_names():
    assert default_repo("moshika", 8) == "kyutai/moshika-mlx-q8"
    assert normalize_quant("bf16") == "bf16" and normalize_quant(4) == "q4"
    with pytest.raises(MoshiError, match="use 4, 8 or bf16"):
        normalize_quant("3")
    with pytest.raises(MoshiError, match="unknown voice"):
        default_repo("hal", 4)


def test_repo_quant_for_hf_repo_without_q(tmp_path):
    cache_repo(tmp_path, "someone/my-moshi", {"model.q8.safetensors": b"w", "tokenizer_spm_32k_3.model": b"t"})
    code = ("from moshi_mlx.hub import repo_quant; "
            "print(repo_quant('someone/my-moshi'), repo_quant('someone/other'), repo_quant('kyutai/moshika-mlx-bf16'))")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["q8", "None", "bf16"], out.stderr
    assert repo_quant("kyutai/moshiko-mlx-q4") == "q4"
