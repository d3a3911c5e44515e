"""Out-of-core quantization: Kyutai's bf16 checkpoint in, a quantized MLX checkpoint and config.json out.

Tensors are read one at a time from the memory-mapped input, renamed with `moshi_mlx.model.weights.sanitize`,
quantized with MLX's affine quantization and appended to the output, whose header is computed beforehand from
shapes alone. Peak memory is about one input tensor and its quantized form, whatever the checkpoint size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from moshi_mlx import Lm, LmConfig, MoshiError
from moshi_mlx.model.weights import is_pytorch_layout, sanitize, write_config

from .recipes import QuantSpec, describe, file_tag, quantization_block
from .safetensors_stream import SafetensorsReader, SafetensorsWriter, TensorSpec, dtype_name, nbytes

FLOAT_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class InputTensor:
    shape: tuple[int, ...]
    dtype: str  # safetensors name


@dataclass
class Layout:
    """Where each input tensor goes: its output tensors (after renaming and quantization), in write order."""

    outputs: dict[str, list[tuple[str, QuantSpec | None]]]  # input name -> [(our name, spec of its module)]
    specs: list[TensorSpec]
    pytorch_names: bool  # the input needs renaming
    num_params: int

    def tensor_specs(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.specs}


def quantized_specs(name: str, shape: tuple[int, ...], spec: QuantSpec | None) -> list[TensorSpec]:
    """The tensors a weight becomes: bf16 as is, or packed uint32 weight plus bf16 scales and biases."""
    if spec is None:
        return [TensorSpec(name, shape, "BF16")]
    base = name[: -len(".weight")]
    *rows, cols = shape
    groups = (*rows, cols // spec.group_size)
    return [
        TensorSpec(name, (*rows, cols * spec.bits // 32), "U32"),
        TensorSpec(f"{base}.scales", groups, "BF16"),
        TensorSpec(f"{base}.biases", groups, "BF16"),
    ]


def plan_layout(
    inputs: Mapping[str, InputTensor], config: LmConfig, plan: Mapping[str, QuantSpec | None]
) -> Layout:
    """The output layout, from shapes only (no tensor is read or allocated, even for the 7B).

    Checks strictly that the renamed checkpoint is exactly the model's parameters, as `load_lm` would.
    """
    for name, t in inputs.items():
        if t.dtype not in FLOAT_DTYPES:
            if name.endswith((".scales", ".biases")) or t.dtype == "U32":
                raise MoshiError(f"the input is already quantized (tensor '{name}' is {t.dtype}): "
                                 "quantize from Kyutai's bf16 weights")
            raise MoshiError(f"the input has a {t.dtype} tensor '{name}': not a Moshi bf16 checkpoint")
    expected = {n: tuple(a.shape) for n, a in tree_flatten(Lm(config).parameters())}
    pytorch = is_pytorch_layout(inputs)
    outputs: dict[str, list[tuple[str, QuantSpec | None]]] = {}
    specs: list[TensorSpec] = []
    seen: dict[str, str] = {}
    for in_name, t in inputs.items():
        # Lazy zeros stand for the values: sanitize's splits and reshapes only compute shapes.
        placeholder = {in_name: mx.zeros(t.shape, mx.bfloat16)}
        renamed = sanitize(placeholder, config) if pytorch else placeholder
        outputs[in_name] = []
        for name, value in renamed.items():
            if name not in expected:
                raise MoshiError(f"tensor '{in_name}' does not fit the model config (it maps to unexpected "
                                 f"'{name}'): wrong --config, or not a Moshi checkpoint")
            if name in seen:
                raise MoshiError(f"tensors '{seen[name]}' and '{in_name}' both give '{name}': not a Moshi checkpoint")
            if tuple(value.shape) != expected[name]:
                raise MoshiError(f"tensor '{name}' has shape {tuple(value.shape)}, the config expects "
                                 f"{expected[name]}: wrong --config?")
            seen[name] = in_name
            module, _, param = name.rpartition(".")
            spec = plan.get(module) if param == "weight" else None
            outputs[in_name].append((name, spec))
            specs += quantized_specs(name, tuple(value.shape), spec)
    missing = [n for n in expected if n not in seen]
    if missing:
        raise MoshiError(f"the checkpoint lacks tensor '{missing[0]}' (and {len(missing) - 1} more): "
                         "wrong --config, or not a Moshi checkpoint")
    num_params = sum(int(np.prod(shape)) for shape in expected.values())
    return Layout(outputs, specs, pytorch, num_params)


def expected_layout(config: LmConfig, plan: Mapping[str, QuantSpec | None]) -> dict[str, TensorSpec]:
    """What `nn.quantize` makes of the model with this plan (lazily): the layout `load_lm` accepts."""
    lm = Lm(config)
    lm.update(tree_map(lambda p: p.astype(mx.bfloat16), lm.parameters()))
    nn.quantize(lm, class_predicate=lambda p, m: plan[p].to_dict() if plan.get(p) else False)
    return {n: TensorSpec(n, tuple(a.shape), dtype_name(a.dtype)) for n, a in tree_flatten(lm.parameters())}


def predicted_size(config: LmConfig, plan: Mapping[str, QuantSpec | None]) -> int:
    """Bytes of tensors a quantized checkpoint will hold (computed from shapes)."""
    return sum(nbytes(s.shape, s.dtype) for s in expected_layout(config, plan).values())


@dataclass
class QuantizeResult:
    weights: Path
    config: Path
    plan: dict[str, QuantSpec | None]
    input_bytes: int
    output_bytes: int
    num_params: int

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per model parameter, scales, biases and bf16 norms included."""
        return 8 * self.output_bytes / self.num_params

    @property
    def name(self) -> str:
        return describe(self.plan)


def output_paths(output_dir: Path, plan: Mapping[str, QuantSpec | None]) -> tuple[Path, Path]:
    return output_dir / f"model.{file_tag(plan)}.safetensors", output_dir / "config.json"


def quantize_checkpoint(
    weights: str | Path,
    output_dir: str | Path,
    config: LmConfig,
    plan: Mapping[str, QuantSpec | None],
    progress: Callable[[str, int], None] | None = None,
) -> QuantizeResult:
    """Quantize a bf16 checkpoint (Kyutai's PyTorch or MLX names) into `output_dir`.

    Writes `model.{q4,q8,mixed}.safetensors` in Kyutai's MLX layout and `config.json` (Kyutai's keys, mlx-lm's
    `quantization` block, `moshi_name`). `progress(name, nbytes)` is called after each input tensor.
    """
    output_dir = Path(output_dir)
    weights_path, config_path = output_paths(output_dir, plan)
    with SafetensorsReader(weights) as reader:
        if reader.path.resolve().parent == output_dir.resolve():
            raise MoshiError(f"the output directory {output_dir} holds the input: choose another --output")
        inputs = {n: InputTensor(t.shape, t.dtype) for n, t in reader.tensors.items()}
        layout = plan_layout(inputs, config, plan)
        output_dir.mkdir(parents=True, exist_ok=True)
        with SafetensorsWriter(weights_path, layout.specs, metadata={"format": "mlx"}) as writer:
            for in_name, outs in layout.outputs.items():
                value = reader.read(in_name)
                if not mx.isfinite(value).all().item():  # the unfinished output is dropped
                    raise MoshiError(f"{reader.path.name} is damaged: tensor '{in_name}' holds NaN or infinite "
                                     "values (download the weights again)")
                renamed = sanitize({in_name: value}, config) if layout.pytorch_names else {in_name: value}
                for name, spec in outs:
                    for out_name, array in _quantized(name, renamed[name], spec):
                        mx.eval(array)
                        writer.write(out_name, array)
                del value, renamed
                mx.clear_cache()
                if progress is not None:
                    info = reader.tensors[in_name]
                    progress(in_name, info.end - info.start)
        input_bytes = reader.total_bytes()
    write_config(config, config_path, quantization=quantization_block(plan), moshi_name=weights_path.name)
    return QuantizeResult(weights_path, config_path, dict(plan), input_bytes, weights_path.stat().st_size,
                          layout.num_params)


def _quantized(name: str, value: mx.array, spec: QuantSpec | None) -> list[tuple[str, mx.array]]:
    # Kyutai quantizes its bf16 model: round to bf16 first, whatever the input precision.
    value = value.astype(mx.bfloat16)
    if spec is None:
        return [(name, value)]
    weight, scales, biases = mx.quantize(value, group_size=spec.group_size, bits=spec.bits)
    base = name[: -len(".weight")]
    return [(name, weight), (f"{base}.scales", scales), (f"{base}.biases", biases)]
