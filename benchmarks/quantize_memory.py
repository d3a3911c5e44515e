"""Peak memory of `moshi-mlx quantize` on a random bf16 checkpoint of a few GB: does the streaming bound hold?

    python benchmarks/quantize_memory.py [--dim 2048] [--layers 16] [--bits 4] [--recipe uniform] [--json]

Writes a random checkpoint with the 7B's structure (Kyutai's released PyTorch names, fused attention) tensor by
tensor, then quantizes it in a fresh process and reads that process's peak resident memory. The bound the
quantizer promises: peak <= output size + 2 GiB. With the defaults the input is about 3.4 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from moshi_mlx.quantize.safetensors_stream import SafetensorsWriter, TensorSpec

from moshi_mlx import Lm, LmConfig
from moshi_mlx.model.weights import to_pytorch_names, write_config

GIB = 1024**3

# Runs in the measured process: imports first, then the baseline, then the quantization.
CHILD = """
import json, sys, time
from moshi_mlx import LmConfig
from moshi_mlx.devtools.process_memory import peak_rss_bytes
from moshi_mlx.quantize.quantizer import quantize_checkpoint
from moshi_mlx.quantize.recipes import make_plan

weights, output, config_path, bits, recipe = sys.argv[1:6]
config = LmConfig.from_json(config_path)
plan = make_plan(config, int(bits), recipe=recipe)
baseline = peak_rss_bytes()
start = time.perf_counter()
result = quantize_checkpoint(weights, output, config, plan)
print(json.dumps({"baseline_rss": baseline, "peak_rss": peak_rss_bytes(), "seconds": time.perf_counter() - start,
                  "input_bytes": result.input_bytes, "output_bytes": result.output_bytes}))
"""


def benchmark_config(dim: int, layers: int) -> LmConfig:
    """The 7B's structure and vocabularies with a narrower, shallower temporal transformer."""
    return LmConfig(dim=dim, num_heads=dim // 128, num_layers=layers)


def write_random_checkpoint(directory: Path, config: LmConfig, seed: int = 0) -> tuple[Path, Path]:
    """Random bf16 weights under Kyutai's released PyTorch names, written one tensor at a time."""
    lm = Lm(config)  # lazy: only the names and shapes are used
    names = to_pytorch_names(dict(tree_flatten(lm.parameters())), config, fused=True)
    specs = [TensorSpec(name, tuple(value.shape), "BF16") for name, value in names.items()]
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    weights, config_path = directory / "model.safetensors", directory / "config.json"
    with SafetensorsWriter(weights, specs, metadata={"format": "pt"}) as writer:
        for spec in specs:
            values = rng.standard_normal(spec.shape, dtype=np.float32)
            values *= np.float32(spec.shape[-1] ** -0.5)
            bf16_bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16
            writer.write(spec.name, mx.array(bf16_bits).view(mx.bfloat16))
    write_config(config, config_path)
    return weights, config_path


def measure(dim: int, layers: int, bits: int, recipe: str, directory: Path) -> dict:
    config = benchmark_config(dim, layers)
    start = time.perf_counter()
    weights, config_path = write_random_checkpoint(directory / "bf16", config)
    written = time.perf_counter() - start
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(weights), str(directory / "out"), str(config_path), str(bits), recipe],
        capture_output=True, text=True, check=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["bound_bytes"] = result["output_bytes"] + 2 * GIB
    result["write_seconds"] = written
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048, help="temporal transformer width (multiple of 128)")
    parser.add_argument("--layers", type=int, default=16, help="temporal transformer layers")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=4)
    parser.add_argument("--recipe", choices=["uniform", "mixed"], default="uniform")
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        r = measure(args.dim, args.layers, args.bits, args.recipe, Path(tmp))
    if args.json:
        print(json.dumps(r))
        return
    print(f"input  {r['input_bytes'] / GIB:6.2f} GiB (random bf16, written in {r['write_seconds']:.0f} s)")
    print(f"output {r['output_bytes'] / GIB:6.2f} GiB ({args.recipe} {args.bits} bits, {r['seconds']:.0f} s)")
    verdict = "holds" if r["peak_rss"] <= r["bound_bytes"] else "EXCEEDED"
    print(f"peak RSS {r['peak_rss'] / GIB:.2f} GiB (after imports {r['baseline_rss'] / GIB:.2f} GiB); "
          f"bound output + 2 GiB = {r['bound_bytes'] / GIB:.2f} GiB: {verdict}")


if __name__ == "__main__":
    main()
