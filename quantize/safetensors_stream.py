"""Safetensors read and written one tensor at a time, so a 14 GB checkpoint never sits in memory.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range,
plus `__metadata__`), then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from moshi_mlx import MoshiError

# Safetensors dtype -> (numpy dtype holding the bytes, MLX dtype). bfloat16 travels as uint16 bits.
_DTYPES: dict[str, tuple[np.dtype, mx.Dtype]] = {
    "BF16": (np.dtype("<u2"), mx.bfloat16),
    "F16": (np.dtype("<f2"), mx.float16),
    "F32": (np.dtype("<f4"), mx.float32),
    "U32": (np.dtype("<u4"), mx.uint32),
    "I32": (np.dtype("<i4"), mx.int32),
    "I64": (np.dtype("<i8"), mx.int64),
    "U8": (np.dtype("u1"), mx.uint8),
}
_NAMES = {mlx_dtype: name for name, (_, mlx_dtype) in _DTYPES.items()}
_PAGE = mmap.ALLOCATIONGRANULARITY


def dtype_name(dtype: mx.Dtype) -> str:
    """Safetensors name of an MLX dtype ('BF16', 'U32', ...)."""
    if dtype not in _NAMES:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors here")
    return _NAMES[dtype]


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][0].itemsize


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class SafetensorsReader:
    """Tensors of a safetensors file read one by one from a read-only memory map.

    The pages of a tensor are handed back to the system once it is copied out, so the resident memory of a
    reader stays about one tensor whatever the file size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise MoshiError(f"weights file not found: {self.path}")
        self._file = open(self.path, "rb")
        try:
            self.tensors, self.metadata = _read_header(self._file, self.path)
            size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except BaseException:
            self._file.close()
            raise

    @property
    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.tensors)

    def total_bytes(self) -> int:
        return sum(t.end - t.start for t in self.tensors.values())

    def read(self, name: str) -> mx.array:
        """One tensor as an MLX array (a copy: the file's pages are released afterwards)."""
        info = self.tensors[name]
        np_dtype, mlx_dtype = _DTYPES[info.dtype]
        count = (info.end - info.start) // np_dtype.itemsize
        raw = np.frombuffer(self._map, dtype=np_dtype, count=count, offset=info.start).reshape(info.shape)
        array = mx.array(raw)
        del raw
        if mlx_dtype == mx.bfloat16:
            array = array.view(mx.bfloat16)
        mx.eval(array)
        self._release(info.start, info.end)
        return array

    def _release(self, start: int, end: int) -> None:
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None or self._map is None:
            return
        start -= start % _PAGE
        try:
            self._map.madvise(advice, start, end - start)
        except OSError:
            pass  # only advice: the pages stay cached and the kernel reclaims them when it needs to

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                # A read interrupted by Ctrl-C or SIGTERM still holds a view of the map: it is unmapped when that
                # view goes, and closing must not turn the interruption into an error.
                pass
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_header(f, path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    def bad(why: str) -> MoshiError:
        return MoshiError(f"{path} is not a safetensors file ({why})")

    head = f.read(8)
    if len(head) != 8:
        raise bad("too short")
    (length,) = struct.unpack("<Q", head)
    size = os.fstat(f.fileno()).st_size
    if length > size - 8:
        raise bad("header longer than the file")
    try:
        header = json.loads(f.read(length))
    except ValueError:
        raise bad("unreadable header") from None
    if not isinstance(header, dict):
        raise bad("unreadable header")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"malformed entry for {name!r}") from None
        if dtype not in _DTYPES:
            raise MoshiError(f"{path}: tensor {name!r} has dtype {dtype}, which moshi-mlx does not read")
        if end - start != nbytes(shape, dtype) or base + end > size:
            raise bad(f"tensor {name!r} does not fit its byte range")
        tensors[name] = TensorInfo(dtype, shape, base + start, base + end)
    tensors = dict(sorted(tensors.items(), key=lambda item: item[1].start))
    return tensors, metadata


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, shape and safetensors dtype, known before its values."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are all announced up front, then streamed in that order.

    The header is written first from the specs; `write` then appends each tensor's bytes. The file appears under
    its final name only when every tensor has been written (`close`), so an interrupted run leaves no half file.
    """

    def __init__(self, path: str | Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._specs = list(specs)
        self._next = 0
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        for spec in self._specs:
            if spec.name in header:
                raise ValueError(f"tensor {spec.name!r} announced twice")
            size = nbytes(spec.shape, spec.dtype)
            header[spec.name] = {
                "dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + size],
            }
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the byte buffer starts 8-aligned
        self.size = 8 + len(encoded) + offset
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")
        self._file.write(struct.pack("<Q", len(encoded)))
        self._file.write(encoded)

    def write(self, name: str, array: mx.array) -> None:
        """Append the next announced tensor; its name, shape and dtype must be the announced ones."""
        if self._next >= len(self._specs):
            raise ValueError(f"tensor {name!r} was not announced")
        spec = self._specs[self._next]
        got = (name, tuple(array.shape), dtype_name(array.dtype))
        if got != (spec.name, spec.shape, spec.dtype):
            raise ValueError(f"expected tensor {(spec.name, spec.shape, spec.dtype)}, got {got}")
        if array.dtype == mx.bfloat16:
            array = array.view(mx.uint16)
        data = np.asarray(array)
        if data.dtype.byteorder == ">":
            data = data.byteswap()
        self._file.write(np.ascontiguousarray(data).data)
        self._next += 1

    def close(self) -> None:
        """Finish the file: it must hold every announced tensor."""
        missing = [s.name for s in self._specs[self._next :]]
        self._file.close()
        if missing:
            self._partial.unlink(missing_ok=True)
            raise ValueError(f"{len(missing)} announced tensors were never written, e.g. {missing[0]!r}")
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._file.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
