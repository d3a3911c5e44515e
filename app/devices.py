"""`moshi-mlx devices`: the audio inputs and outputs Moshi can use, and finding one by number or name."""

from __future__ import annotations

import argparse
from typing import Any

from moshi_mlx.errors import MoshiError


def sounddevice() -> Any:
    """The sounddevice module, or one line saying what is missing."""
    try:
        import sounddevice as sd
    except OSError as e:  # raised at import when the PortAudio library is absent
        raise MoshiError(f"no audio system: {e} (install PortAudio, e.g. `brew install portaudio`)") from None
    return sd


def query_devices() -> list[dict]:
    sd = sounddevice()
    try:
        return [dict(d, index=i) for i, d in enumerate(sd.query_devices())]
    except sd.PortAudioError as e:
        raise MoshiError(f"cannot list audio devices: {e}") from None


def find_device(spec: str | int | None, kind: str) -> int | None:
    """The index of an input or output device given by number or by (part of) its name; None = the default.

    `kind` is "input" or "output". Fails with one line when nothing matches or when there is no such device at all.
    """
    channels = f"max_{kind}_channels"
    devices = [d for d in query_devices() if d[channels] > 0]
    if not devices:
        raise MoshiError(f"no audio {kind} device found (`moshi-mlx devices` lists what is available)")
    if spec is None or spec == "":
        return None
    text = str(spec).strip()
    if text.isdigit():
        index = int(text)
        if any(d["index"] == index for d in devices):
            return index
        raise MoshiError(f"no audio {kind} device number {index} (`moshi-mlx devices` lists them)")
    exact = [d for d in devices if d["name"].lower() == text.lower()]
    matches = exact or [d for d in devices if text.lower() in d["name"].lower()]
    if not matches:
        raise MoshiError(f"no audio {kind} device matches {text!r} (`moshi-mlx devices` lists them)")
    if len(matches) > 1:
        names = ", ".join(repr(d["name"]) for d in matches[:4])
        raise MoshiError(f"{text!r} matches several {kind} devices ({names}): give its number")
    return matches[0]["index"]


def describe() -> list[str]:
    """One line per device: number, default marks, name, channels in/out, host API, sample rate."""
    sd = sounddevice()
    devices = query_devices()
    if not devices:
        raise MoshiError("no audio devices found")
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
    parser = argparse.ArgumentParser(
        prog="moshi-mlx devices",
        description="List the audio devices. Choose one for `moshi-mlx chat` with --input-device / "
        "--output-device, by number or by part of its name. '<' marks the default input, '>' the default output.",
    )
    parser.parse_args(argv)
    for line in describe():
        print(line)
