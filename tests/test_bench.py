import json
import re

import pytest
from moshi_mlx.app import bench


def test_bench_tiny_prints_the_figures_and_writes_a_trace(tmp_path, capsys):
    trace_path = tmp_path / "f.json"
    bench.main(["--model", "tiny", "--frames", "3", "--trace", str(trace_path), "-q", "bf16"])
    out = capsys.readouterr().out
    for stage in bench.STAGES:
        assert re.search(rf"^{stage} +[\d.]+ ms +[\d.]+ ms$", out, re.M), out
    ops = re.search(r"LM step: ([\d,]+) operations and 1 host synchronisation", out)
    assert ops and 100 < int(ops.group(1).replace(",", "")) < 2000, out
    assert re.search(r"memory: peak resident [\d.]+ GiB .*budget [\d.]+ GiB", out), out
    rtf = re.search(r"3 frames in [\d.]+ s, real-time factor ([\d.]+)", out)
    assert rtf and float(rtf.group(1)) > 0, out
    assert re.search(r"^verdict: tiny bf16 (runs|does not run) in real time on this machine", out, re.M), out
    assert re.search(r"^live loop \(Engine, simulated devices: 20 ms blocks \+ 10 ms buffering each way, 25 frames "
                     r"in real time\): \d+ frames skipped, \d+ underruns$", out, re.M), out
    latency = re.search(r"^latency, mouth to ear: median (\d+) ms, p90 \d+ ms, max \d+ ms over (\d+) frames", out, re.M)
    # At least the model's 160 ms, the input's buffering beyond its block and the output's latency.
    assert latency and int(latency.group(1)) >= 160 + 10 + 30 and int(latency.group(2)) > 5, out

    events = json.loads(trace_path.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert all(isinstance(e[key], (int, float)) and e[key] >= 0 for e in spans for key in ("ts", "dur"))
    names = [e["name"] for e in spans if e["tid"] == 1]
    # Three frames of each stage; Moshi's first audio (and so the first decode) comes at the second frame.
    assert {n: names.count(n) for n in set(names)} == {"encode": 3, "temporal": 3, "depth": 3, "decode": 2}
    assert [e["name"] for e in spans if e["tid"] == 2] == ["frame 0", "frame 1", "frame 2"]
    frame = [e for e in spans if e["tid"] == 1 and e["args"]["frame"] == 1]
    assert [e["name"] for e in sorted(frame, key=lambda e: e["ts"])] == list(bench.STAGES)


def test_bench_refuses_one_frame(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", "tiny", "--frames", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --frames: at least 2")


def test_bench_profiles_personaplex(tmp_path, capsys, monkeypatch):
    # PersonaPlex's layout (16 depth steps, NVIDIA's generation) at the tiny widths: the 7B is too slow here.
    monkeypatch.setitem(bench.MODELS, "personaplex", {**bench.MODELS["tiny"], **bench.MODELS["personaplex"]})
    trace_path = tmp_path / "f.json"
    bench.main(["--model", "personaplex", "--frames", "4", "--trace", str(trace_path), "-q", "bf16"])
    out = capsys.readouterr().out
    assert out.startswith("moshi-mlx bench: PersonaPlex 7B bf16, random weights built in memory, 4 frames"), out
    for stage in bench.STAGES:
        assert re.search(rf"^{stage} +[\d.]+ ms +[\d.]+ ms$", out, re.M), out
    assert re.search(r"^verdict: PersonaPlex 7B bf16 (runs|does not run) in real time", out, re.M), out
    names = [e["name"] for e in json.loads(trace_path.read_text())["traceEvents"] if e["ph"] == "X" and e["tid"] == 1]
    # The first call computes nothing (it only sets the initial tokens); Moshi's first audio comes at the third.
    assert {n: names.count(n) for n in set(names)} == {"encode": 4, "temporal": 3, "depth": 3, "decode": 2}
