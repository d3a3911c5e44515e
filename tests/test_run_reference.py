"""`moshi-mlx run --seed 0` on the tiny model writes the bytes it wrote before the package was reorganised.

The reference files were written by this module with MOSHI_MLX_WRITE_RUN_REFERENCE=1 on the tree before the
restructuring (issue 17); any change to a frame's arithmetic, sampling or output writing shows here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import soundfile
from moshi_mlx.app.cli import main

from moshi_mlx.stream.echo.simulator import speech_like

REFERENCE = Path(__file__).parent / "fixtures" / "run_reference" / "run_seed0.json"
BACKENDS = ("mlx", "rust")


def _run(tiny_model, tmp_path: Path, backend: str) -> dict[str, str]:
    source = tmp_path / "input.wav"
    soundfile.write(source, speech_like(2.0, seed=3), 24000, subtype="PCM_16")
    out, transcript = tmp_path / f"moshi_{backend}.wav", tmp_path / f"moshi_{backend}.txt"
    main(["run", str(source), "--out", str(out), "--transcript", str(transcript), "--stereo", "--seed", "0",
          "--quiet", "--mimi", backend, *tiny_model.cli_args()])
    return {"wav": hashlib.sha256(out.read_bytes()).hexdigest(), "transcript": transcript.read_text()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_writes_the_reference_bytes(tiny_model, tmp_path, backend):
    pytest.importorskip("rustymimi") if backend == "rust" else None
    got = _run(tiny_model, tmp_path, backend)
    if os.environ.get("MOSHI_MLX_WRITE_RUN_REFERENCE"):
        saved = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        saved[backend] = got
        REFERENCE.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(REFERENCE.read_text())[backend]
