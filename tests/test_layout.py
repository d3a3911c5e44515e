"""The 7B preset, quantized as Kyutai does, has exactly the layout of Kyutai's published MLX files.

Nothing is evaluated: MLX arrays are lazy, so shapes and dtypes come without allocating the 14 GB.
"""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_map

from moshi_mlx import Lm, LmConfig

MANIFEST = json.loads((Path(__file__).parent / "fixtures" / "moshiko_v0_1_mlx_layout.json").read_text())
DTYPES = {mx.bfloat16: "bfloat16", mx.uint32: "uint32", mx.float32: "float32"}


def lazy_7b(quant: str) -> Lm:
    lm = Lm(LmConfig.moshi_7b())
    lm.update(tree_map(lambda p: p.astype(mx.bfloat16), lm.parameters()))
    if quant == "q4":
        nn.quantize(lm, group_size=32, bits=4)
    elif quant == "q8":
        nn.quantize(lm, group_size=64, bits=8)
    return lm


@pytest.mark.parametrize("quant", ["bf16", "q8", "q4"])
def test_7b_layout_matches_kyutai_manifest(quant):
    ours = {
        name: [list(a.shape), DTYPES[a.dtype]]
        for name, a in tree_flatten(lazy_7b(quant).parameters())
    }
    expected = MANIFEST[quant]
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    mismatched = {n: (ours[n], expected[n]) for n in expected if ours[n] != expected[n]}
    assert mismatched == {}
