"""Reading `torch.save` files without torch: tensors in plain containers, and nothing else.

A `torch.save` file (PyTorch 1.6 and later) is a zip archive: `<name>/data.pkl` pickles the object, each tensor
reduced to `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` with its storage a persistent id
`("storage", torch.FloatStorage, key, location, numel)` whose bytes are the entry `<name>/data/<key>`, in the
byte order of `<name>/byteorder` (little when absent). The unpickler below resolves only those names, to functions
of its own that build numpy arrays; a pickle that asks for any other global (`os.system`, `builtins.eval`, a
class of its own) is refused before anything it names is imported or called.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MoshiError

MAX_PICKLE_BYTES = 64 * 1024**2  # data.pkl holds the structure only; the tensors' bytes are separate entries


@dataclass(frozen=True)
class _Kind:
    """An element type: a storage class (`torch.FloatStorage`) or a dtype (`torch.float32`)."""

    name: str
    code: str  # numpy's type code, little-endian; bfloat16 is read as its 16 bits ("u2")
    bfloat16: bool = False

    def dtype(self, byteorder: str) -> np.dtype:
        return np.dtype(self.code).newbyteorder("<" if byteorder == "little" else ">")


_CODES = {
    "Float": ("float32", "f4"), "Double": ("float64", "f8"), "Half": ("float16", "f2"), "Long": ("int64", "i8"),
    "Int": ("int32", "i4"), "Short": ("int16", "i2"), "Char": ("int8", "i1"), "Byte": ("uint8", "u1"),
    "Bool": ("bool", "b1"), "ComplexFloat": ("complex64", "c8"), "ComplexDouble": ("complex128", "c16"),
}
_STORAGES = {f"{prefix}Storage": _Kind(f"torch.{prefix}Storage", code) for prefix, (_, code) in _CODES.items()}
_STORAGES["BFloat16Storage"] = _Kind("torch.BFloat16Storage", "u2", bfloat16=True)
_STORAGES["UntypedStorage"] = _Kind("torch.UntypedStorage", "u1")
_DTYPES = {name: _Kind(f"torch.{name}", code) for name, code in _CODES.values()}
_DTYPES.update({"bfloat16": _Kind("torch.bfloat16", "u2", bfloat16=True),
                **{f"uint{bits}": _Kind(f"torch.uint{bits}", f"u{bits // 8}") for bits in (16, 32, 64)}})


@dataclass(frozen=True)
class _Storage:
    raw: bytes
    kind: _Kind
    byteorder: str


class _Refused(Exception):
    """What the file asked for that a file of tensors never holds."""


def _elements(storage: Any, kind: _Kind | None = None) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise _Refused("a tensor whose storage is not one of the file's data entries")
    kind = kind or storage.kind
    dtype = kind.dtype(storage.byteorder)
    usable = len(storage.raw) - len(storage.raw) % dtype.itemsize
    return np.frombuffer(storage.raw[:usable], dtype=dtype)


def _whole(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _Refused(f"a tensor {what} that is not a non-negative whole number ({value!r})")
    return value


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, hooks: Any, kind: _Kind | None = None) -> np.ndarray:
    """The tensor's elements as a new numpy array (bfloat16 widened to float32, exactly), checked to lie within
    its storage."""
    if hooks is not None and not (isinstance(hooks, OrderedDict) and not hooks):
        raise _Refused("a tensor with backward hooks")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise _Refused("a tensor whose size and stride do not match")
    elements = _elements(storage, kind)
    offset = _whole(offset, "offset")
    shape = tuple(_whole(n, "size") for n in size)
    steps = tuple(_whole(s, "stride") for s in stride)
    if 0 in shape:
        values = np.zeros(shape, elements.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, steps, strict=True))
        if last >= len(elements):
            raise _Refused(f"a tensor that reaches element {last} of a storage of {len(elements)}")
        values = np.lib.stride_tricks.as_strided(
            elements[offset:], shape, tuple(s * elements.itemsize for s in steps), writeable=False
        ).copy()
    values = values.astype(values.dtype.newbyteorder("="))
    if (kind or storage.kind).bfloat16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _tensor(storage, offset, size, stride, hooks)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, _Kind) or dtype.name not in {k.name for k in _DTYPES.values()}:
        raise _Refused(f"a tensor of dtype {dtype!r}")
    return _tensor(storage, offset, size, stride, hooks, dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise _Refused("a parameter that is not a tensor")
    return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch", name): kind for name, kind in {**_STORAGES, **_DTYPES}.items()},
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Kind)
                and pid[1] in _STORAGES.values() and isinstance(pid[2], str) and pid[2].isalnum()):
            raise _Refused(f"a persistent object that is not a tensor storage ({str(pid)[:60]})")
        kind, key, numel = pid[1], pid[2], _whole(pid[4], "storage size")
        if key not in self.storages:
            entry = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(entry)
            except KeyError:
                raise _Refused(f"a storage {entry} the archive lacks") from None
            itemsize = np.dtype(kind.code).itemsize
            if info.file_size < numel * itemsize:
                raise _Refused(f"a storage of {numel} elements in {info.file_size} bytes")
            self.storages[key] = _Storage(self.archive.read(entry)[: numel * itemsize], kind, self.byteorder)
        return self.storages[key]


def _prefix(archive: zipfile.ZipFile) -> str:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise MoshiError("no data.pkl at its top")
    return pickles[0][: -len("data.pkl")]


def load_torch_file(source: str | Path | bytes, name: str | None = None) -> Any:
    """What `torch.save` wrote, when it is tensors (as numpy arrays) in dicts, lists and tuples of plain values.

    `source` is a path or the file's bytes (`name` then names it in messages). Anything else in the pickle (a
    class, a function, an object of any other kind) is refused with one line; nothing of it is imported or run.
    """
    label = name or (Path(source).name if not isinstance(source, bytes) else "the voice file")
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            prefix = _prefix(archive)
            pkl = archive.getinfo(f"{prefix}data.pkl")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise MoshiError(f"its data.pkl is {pkl.file_size} bytes, far more than tensors need")
            names = set(archive.namelist())
            byteorder = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names \
                else "little"
            if byteorder not in ("little", "big"):
                raise MoshiError(f"unknown byte order {byteorder[:20]!r}")
            return _TensorUnpickler(archive.read(pkl), archive, prefix, byteorder).load()
    except _Refused as e:
        raise MoshiError(f"{label} holds more than tensors: it asks for {e}, which a file of tensors never needs; "
                         "refusing to read it (nothing in it was run)") from None
    except MoshiError as e:
        raise MoshiError(f"{label} is not a torch.save file of tensors: {e}") from None
    except FileNotFoundError:
        raise MoshiError(f"file not found: {source}") from None
    except IsADirectoryError:
        raise MoshiError(f"{source} is a folder: give the .pt file itself") from None
    except zipfile.BadZipFile:
        raise MoshiError(f"{label} is not a torch.save file of PyTorch 1.6 or later (not a zip archive); "
                         "re-save it with a current torch") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, UnicodeDecodeError, zipfile.LargeZipFile) as e:
        raise MoshiError(f"{label} is damaged: {type(e).__name__}: {str(e)[:80]}") from None
