import mlx.core as mx
import numpy as np
import pytest

from moshi_mlx import LmGen
from moshi_mlx.devtools.opcount import OpCounter, graph_ops
from moshi_mlx.devtools.random_lm import random_lm, tiny_config


def test_counter_counts_each_evaluated_operation_once():
    a = mx.array([1.0, 2.0])
    mx.eval(a)
    with OpCounter() as counter:
        b = mx.exp(a)
        c = b * b
        assert graph_ops(c) == {"Exp": 1, "Multiply": 1}
        mx.eval(b)  # Exp runs here ...
        assert c.sum().item() > 0  # ... so this sync runs Multiply and Sum only
        assert bool(c.max() > 0)
        mx.eval(c)  # nothing left to run: not a sync
    # A full reduction is Sum (or Max) then Squeeze to a scalar.
    assert counter.by_name == {"Exp": 1, "Multiply": 1, "Sum": 1, "Max": 1, "Squeeze": 2, "Greater": 1}
    assert counter.syncs == 3
    assert mx.eval is not counter.sync and (mx.exp(a) > 0).all().item()  # restored


# Operations per frame measured on the float32 tiny models (MLX 0.32, CPU: the mx.fast fallbacks count as their
# parts) plus ~6 %: a step that builds more operations than this is a regression (Kyutai's moshi_mlx builds 2,193
# and 8,715 on the bf16 tiny and deep models of benchmarks/compare_kyutai.py, ours 900 and 3,446).
@pytest.mark.parametrize("layers, depth_layers, bound", [(2, 2, 870), (32, 6, 3400)])
def test_operations_per_frame_stay_bounded(layers, depth_layers, bound):
    gen = LmGen(random_lm(tiny_config(num_layers=layers, depformer_num_layers=depth_layers)), seed=0)
    user = np.random.default_rng(0).integers(0, 64, size=(6, 8))
    for t in range(3):  # compile
        gen.step(user[t])
    with OpCounter() as counter:
        for t in range(3, 6):
            gen.step(user[t])
    assert counter.syncs == 3
    assert counter.ops / 3 <= bound, counter.by_name.most_common(10)
    # The measure is real: the eager step builds far more.
    eager = LmGen(gen.lm, seed=0, compile=False)
    for t in range(3):
        eager.step(user[t])
    with OpCounter() as eager_counter:
        eager.step(user[3])
    assert eager_counter.ops > 1.3 * counter.ops / 3
