"""The `.pt` reader: what torch.save wrote (fixtures made with torch), and nothing but tensors.

The refusals are checked on pickles built here opcode by opcode (as torch lays them out) or by `pickle` itself, so
that each asks for exactly one thing a file of tensors never holds.
"""

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx import MoshiError
from moshi_mlx.persona.torch_zip import load_torch_file

FIXTURES = Path(__file__).parent / "fixtures" / "voice"


def flatten(value, path=""):
    if isinstance(value, np.ndarray):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    out = {}
    for key, item in items:
        out.update(flatten(item, f"{path}/{key}" if path else str(key)))
    return out


@pytest.mark.parametrize("name", ["tensors", "voice_tiny"])
def test_reads_what_torch_saved(name):
    data = load_torch_file(FIXTURES / f"{name}.pt")
    expected = np.load(FIXTURES / f"{name}_expected.npz")
    arrays = flatten(data)
    assert sorted(arrays) == sorted(expected.files)
    for key in expected.files:
        assert arrays[key].dtype == expected[key].dtype, key
        assert arrays[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(arrays[key], expected[key], err_msg=key)


def test_containers_and_views():
    data = load_torch_file((FIXTURES / "tensors.pt").read_bytes(), "tensors.pt")
    nested = data["nested"]
    assert nested["list"][1:] == [7, "text"] and isinstance(nested["tuple"], tuple)
    assert nested["tuple"][1:] == (2.5, None)
    assert isinstance(data["ordered"], OrderedDict)
    assert data["bfloat16"].dtype == np.float32  # widened exactly
    view = data["view"]  # base[1:, ::2]: a storage offset and strides
    assert view.shape == (3, 3) and view.flags.writeable and view.flags.c_contiguous
    np.testing.assert_array_equal(data["shared_a"].reshape(-1), np.arange(2, 8, dtype=np.int32))
    np.testing.assert_array_equal(data["shared_b"], np.arange(0, 12, 3, dtype=np.int32))
    assert data["scalar"].shape == () and float(data["scalar"]) == 3.5
    assert data["empty"].shape == (0, 3)


# --- torch's layout, assembled by hand: GLOBAL, BINPERSID, REDUCE (pickle protocol 2) ---


def text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def integer(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def tensor_pickle(storage="FloatStorage", key="0", numel=6, offset=0, size=(2, 3), stride=(3, 1),
                  pid: bytes | None = None, rebuild=b"ctorch._utils\n_rebuild_tensor_v2\n") -> bytes:
    kind = f"ctorch\n{storage}\n".encode()
    pid = pid or b"(" + text("storage") + kind + text(key) + text("cpu") + integer(numel) + b"t"
    shape = b"(" + b"".join(integer(n) for n in size) + b"t"
    steps = b"(" + b"".join(integer(n) for n in stride) + b"t"
    hooks = b"ccollections\nOrderedDict\n)R"
    args = b"(" + pid + b"Q" + integer(offset) + shape + steps + b"\x89" + hooks + b"t"
    return b"\x80\x02" + b"}" + text("x") + rebuild + args + b"Rs."


def archive(pkl: bytes, entries: dict[str, bytes] | None = None, byteorder: str | None = "little") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for name, data in (entries or {}).items():
            z.writestr(f"archive/data/{name}", data)
        z.writestr("archive/version", "3\n")
    return buffer.getvalue()


VALUES = np.arange(6, dtype=np.float32) / 4


def test_hand_made_tensor_and_byte_orders():
    got = load_torch_file(archive(tensor_pickle(), {"0": VALUES.astype("<f4").tobytes()}))["x"]
    np.testing.assert_array_equal(got, VALUES.reshape(2, 3))
    big = load_torch_file(archive(tensor_pickle(), {"0": VALUES.astype(">f4").tobytes()}, byteorder="big"))["x"]
    np.testing.assert_array_equal(big, VALUES.reshape(2, 3))
    assert big.dtype == np.float32 and big.dtype.isnative
    older = load_torch_file(archive(tensor_pickle(), {"0": VALUES.tobytes()}, byteorder=None))["x"]  # torch < 2.1
    np.testing.assert_array_equal(older, VALUES.reshape(2, 3))
    bf16 = (VALUES.view(np.uint32) >> 16).astype("<u2")  # these values are exact in bfloat16
    got = load_torch_file(archive(tensor_pickle("BFloat16Storage"), {"0": bf16.tobytes()}))["x"]
    np.testing.assert_array_equal(got, VALUES.reshape(2, 3))


def refusal(data: bytes) -> str:
    with pytest.raises(MoshiError) as caught:
        load_torch_file(data, "evil.pt")
    message = str(caught.value)
    assert "\n" not in message
    return message


class Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refuses_a_pickle_that_runs_a_command(tmp_path, protocol):
    marker = tmp_path / "ran"
    pkl = pickle.dumps({"x": Evil(f"touch {marker}")}, protocol=protocol)
    message = refusal(archive(pkl))
    assert "evil.pt holds more than tensors: it asks for posix.system" in message or "os.system" in message
    assert "nothing in it was run" in message
    assert not marker.exists()


@pytest.mark.parametrize(("pkl", "asked"), [
    (b"cos\nsystem\n(S'echo hi'\ntR.", "os.system"),
    (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x041+1\x85R.", "builtins.eval"),
    (b"c__builtin__\nexec\n(S'x=1'\ntR.", "__builtin__.exec"),
    (tensor_pickle(rebuild=b"ctorch._utils\n_rebuild_device_tensor_from_numpy\n"),
     "torch._utils._rebuild_device_tensor_from_numpy"),
    (b"ctorch.nn\nModule\n)R.", "torch.nn.Module"),
    (pickle.dumps({"x": Path("/etc")}), "pathlib"),
    (b"cnot_a_module_anywhere\nf\n)R.", "not_a_module_anywhere.f"),  # refused, never imported
])
def test_refuses_any_global_but_tensor_storage(pkl, asked):
    assert asked in refusal(archive(pkl))


@pytest.mark.parametrize(("pkl", "entries", "why"), [
    (tensor_pickle(pid=b"(" + text("module") + text("os") + b"t"), {}, "a persistent object that is not a tensor"),
    (tensor_pickle(key="../x"), {}, "not a tensor storage"),
    (tensor_pickle(), {}, "a storage archive/data/0 the archive lacks"),
    (tensor_pickle(numel=60), {"0": VALUES.tobytes()}, "a storage of 60 elements in 24 bytes"),
    (tensor_pickle(offset=1), {"0": VALUES.tobytes()}, "reaches element 6 of a storage of 6"),
    (tensor_pickle(stride=(4, 1)), {"0": VALUES.tobytes()}, "reaches element"),
    (tensor_pickle(stride=(-1, 1)), {"0": VALUES.tobytes()}, "stride that is not a non-negative whole number"),
])
def test_refuses_storages_out_of_bounds(pkl, entries, why):
    assert why in refusal(archive(pkl, entries))


def test_not_a_tensor_file(tmp_path):
    assert "not a torch.save file of PyTorch 1.6 or later" in refusal(b"\x80\x02}q\x00.")
    assert "no data.pkl" in refusal(archive(b"").replace(b"archive/data.pkl", b"archive/data.pkx"))
    assert "is damaged" in refusal(archive(tensor_pickle()[:-5], {"0": VALUES.tobytes()}))
    with pytest.raises(MoshiError, match="file not found"):
        load_torch_file(tmp_path / "missing.pt")
