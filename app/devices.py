"""`moshi-mlx devices`: the audio inputs and outputs Moshi can use."""

from __future__ import annotations

from moshi_mlx import MoshiError
from moshi_mlx.stream.audio_io import list_devices, sounddevice

from .parser import Parser


def describe() -> list[str]:
    """One line per device: default marks, number, name, channels in/out, host API, sample rate."""
    sd = sounddevice()
    devices = list_devices()
    if not devices:
        raise MoshiError("no audio devices found (is a sound card connected, or the sound server running?)")
    default_in, default_out = sd.default.device
    apis = [api["name"] for api in sd.query_hostapis()]
    lines = []
    for d in devices:
        mark = ("<" if d["index"] == default_in else " ") + (">" if d["index"] == default_out else " ")
        lines.append(
            f"{mark} {d['index']:>3}  {d['name']}  ({d['max_input_channels']} in, {d['max_output_channels']} out, "
            f"{apis[d['hostapi']]}, {d['default_samplerate']:.0f} Hz)"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="moshi-mlx devices",
        description="List the audio devices. Choose one for `moshi-mlx chat` with --input-device / "
        "--output-device, by number or by part of its name. '<' marks the default input, '>' the default output.",
    )
    parser.parse_args(argv)
    for line in describe():
        print(line)
