"""Which parts of Moshi take 4 bits best: the measurements behind the `mixed` recipe.

    python benchmarks/quantize_sensitivity.py [--size small] [--steps 48] [--batch 2] [--scale 1.2]

On a random-weight model with the 7B's structure, quantizes one group of modules (embeddings, text_linear,
temporal attention, temporal MLP, depth transformer) at 4 bits with the rest at 8, and one group at 8 with the rest
at 4, and prints the quality report's KL and top-1 agreement against bf16 for each, with the 7B's size of each
choice (computed from shapes). Then uniform q4, q8, the whole temporal transformer at 4, and the mixed recipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_map
from moshi_mlx.quantize.quantizer import predicted_size
from moshi_mlx.quantize.recipes import MIXED, Q4, Q8, make_plan, quantize_model
from moshi_mlx.quantize.report import compare, logits_of, random_codes
from rich.console import Console
from rich.table import Table

from moshi_mlx import LmConfig
from moshi_mlx.devtools.random_lm import random_lm, tiny_config
from moshi_mlx.model.weights import save_lm_pytorch, write_config

SIZES = {
    # The 7B's ratios (depth dim = dim / 4, the same hidden_scale and depth feed-forward ratio), scaled down.
    "small": dict(dim=512, num_heads=8, num_layers=6, depformer_dim=256, depformer_num_heads=4,
                  depformer_num_layers=3, depformer_dim_feedforward=1056, text_card=4000, card=2048, context=100),
    "tiny": dict(dim=64, num_heads=2, num_layers=2, hidden_scale=3, depformer_dim=64,
                 depformer_dim_feedforward=192),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.2, help="weight scale of the random model (sharper logits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-model", default=None, metavar="DIR",
                        help="only write the bf16 model measured here (Kyutai's PyTorch names) and its config.json, "
                        "to try `moshi-mlx quantize` on")
    args = parser.parse_args()

    config = tiny_config(**SIZES[args.size])
    codes = random_codes(config, args.steps, args.batch, seed=args.seed)

    def model(plan=None):
        lm = random_lm(config, seed=args.seed, scale=args.scale)
        lm.update(tree_map(lambda p: p.astype(mx.bfloat16), lm.parameters()))
        if plan:
            quantize_model(lm, plan)
        return lm

    if args.write_model:
        directory = Path(args.write_model)
        directory.mkdir(parents=True, exist_ok=True)
        save_lm_pytorch(model(), directory / "model.safetensors", fused=True)
        write_config(config, directory / "config.json")
        print(f"wrote {directory / 'model.safetensors'} and {directory / 'config.json'}")
        return

    reference = logits_of(model(), codes)
    groups = list(MIXED)
    cases = [("q8", {}, 8), ("q4", {}, 4)]
    cases += [(f"q8, {g} at 4", {g: Q4}, 8) for g in groups]
    cases += [(f"q4, {g} at 8", {g: Q8}, 4) for g in groups]
    cases += [("temporal at 4, rest 8", {"temporal.attention": Q4, "temporal.mlp": Q4}, 8)]
    cases += [("mixed recipe", None, None)]
    seven_b = LmConfig.moshi_7b()

    table = Table(title=f"Quantization sensitivity ({args.size} random model, scale {args.scale}; sizes for the 7B)")
    for column in ("case", "7B GiB", "text KL", "text top-1", "audio KL", "audio top-1", "s"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for name, overrides, bits in cases:
        start = time.perf_counter()
        recipe = "mixed" if overrides is None else "uniform"
        plan = make_plan(config, bits or 4, recipe=recipe, groups=overrides)
        r = compare(name, reference, logits_of(model(plan), codes), codes, config)
        seven = predicted_size(seven_b, make_plan(seven_b, bits or 4, recipe=recipe, groups=overrides))
        print(f"{name}: text KL {r.text.kl:.3g}, audio KL {r.audio.kl:.3g}", file=sys.stderr)
        table.add_row(name, f"{seven / 1024**3:.2f}", f"{r.text.kl:.2e}", f"{100 * r.text.top1:.1f} %",
                      f"{r.audio.kl:.2e}", f"{100 * r.audio.top1:.1f} %", f"{time.perf_counter() - start:.1f}")
    ref_entropy = compare("bf16", reference, reference, codes, config)
    Console(width=max(Console().width, 110)).print(table)  # one line a case, even in a file
    print(f"bf16 cross-entropy on the random codes: text {ref_entropy.text.ce:.3f}, audio {ref_entropy.audio.ce:.3f}")


if __name__ == "__main__":
    main()
