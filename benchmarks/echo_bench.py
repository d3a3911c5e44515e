"""Echo cancellation: cost per 80 ms frame, added latency, and echo reduction on synthetic speech in a simulated room.

    python benchmarks/echo_bench.py [--seconds 20]

Moshi's voice and the user's are speech-like signals (`speech_like`); the echo path is a bulk
delay plus 60 ms of reflections (`room_response`), as loud as the user. Frames go through the canceller in the
live loop's order: the speaker's block queued, then the microphone frame of the same 80 ms cleaned.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE
from moshi_mlx.stream.echo.canceller import EchoCanceller, EchoSettings
from moshi_mlx.stream.echo.simulator import convolve, room_response, speech_like

SR, FRAME = SAMPLE_RATE, FRAME_SIZE


def level_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def windows(a: np.ndarray, b: np.ndarray, where: np.ndarray, window_s: float, start_s: float) -> np.ndarray:
    n = int(window_s * SR)
    return np.array([level_db(a[i : i + n]) - level_db(b[i : i + n]) for i in range(int(start_s * SR), len(a) - n, n)
                     if level_db(where[i : i + n]) > -45])


def run(mic: np.ndarray, ref: np.ndarray, settings: EchoSettings | None = None) -> tuple[np.ndarray, EchoCanceller,
                                                                                       list[float]]:
    canceller = EchoCanceller(settings)
    out, times = np.zeros_like(mic), []
    for t in range(len(mic) // FRAME):
        s = slice(t * FRAME, (t + 1) * FRAME)
        canceller.add_reference(ref[s])
        start = time.perf_counter()
        out[s] = canceller.clean(mic[s])
        times.append((time.perf_counter() - start) * 1000)
    return out, canceller, times


def added_latency_ms(seconds: float) -> float:
    """Where the cleaned microphone best matches the raw one (no echo), in ms."""
    x = speech_like(seconds, seed=5)
    out, _, _ = run(x, np.zeros_like(x))
    a, b = x[SR:-SR], out[SR:-SR]
    lags = range(0, 480)
    corr = [np.dot(a[: len(a) - k], b[k:]) for k in lags]
    return lags[int(np.argmax(corr))] * 1000 / SR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    sec = args.seconds
    moshi, user = speech_like(sec, seed=1), speech_like(sec, seed=2, pitch=(180, 260))
    noise = (10 ** (-75 / 20) * np.random.default_rng(9).standard_normal(len(moshi))).astype(np.float32)

    print("echo reduction, Moshi alone (median over 0.5 s windows after the first second; after 3 s for 700 ms)")
    costs: list[float] = []
    for delay in (20, 40, 150, 300, 450, 700):
        echo = convolve(moshi, room_response(delay))
        out, canceller, times = run(echo + noise, moshi)
        costs += times
        start = 3.0 if delay > 450 else 1.0
        held = f", held back {canceller.hold_ms:.0f} ms" if canceller.hold else ""
        lead = "-" if canceller.xcorr_lead_ms is None else f"{canceller.xcorr_lead_ms:.0f} ms"
        print(f"  echo {delay:4d} ms later: {np.median(windows(echo, out, echo, 0.5, start)):5.1f} dB  "
              f"(lead found {lead}{held}; status-line figure {canceller.echo_reduction_db():.1f} dB)")
    echo = convolve(moshi, room_response(700))
    out, _, _ = run(echo + noise, moshi, EchoSettings(max_lead_ms=10_000))
    print(f"  echo  700 ms later, no hold-back: {np.median(windows(echo, out, echo, 0.5, 3.0)):5.1f} dB")

    echo = convolve(moshi, room_response(40))
    near = user.copy()
    near[: int(sec / 2 * SR)] = 0
    out, _, _ = run(echo + near + noise, moshi)
    change = windows(out, near, near, 0.1, sec / 2)
    print(f"double talk (echo as loud as the user): user level {np.median(change):+.1f} dB median over 100 ms "
          f"windows; {np.mean(change < -6) * 100:.0f} % of windows below -6 dB")

    out, canceller, _ = run(user + noise, moshi)
    change = windows(out, user, user, 0.1, 0.0)
    first = windows(out[: 2 * SR], user[: 2 * SR], user[: 2 * SR], 0.1, 0.0)
    print(f"headphones (no echo path): user level {np.median(windows(out, user, user, 0.1, 2.0)):+.1f} dB median "
          f"after 2 s ({np.median(change):+.1f} dB over all); during the first 2 s {np.median(first):+.1f} dB "
          f"(until no echo path is established: echo_path={canceller.echo_path})")

    costs_arr = np.array(costs)
    x = np.zeros(FRAME, np.float32)
    canceller = EchoCanceller()
    start = time.perf_counter()
    for _ in range(1000):
        canceller.add_reference(x)
    add_us = (time.perf_counter() - start) * 1e3
    print(f"cost per 80 ms frame (clean, incl. the 0.5 s lead estimate): median {np.median(costs_arr):.2f} ms, "
          f"p95 {np.percentile(costs_arr, 95):.2f} ms, max {costs_arr.max():.2f} ms; "
          f"add_reference {add_us:.1f} us per block")
    print(f"added latency: {added_latency_ms(min(sec, 6)):.1f} ms (AEC3's own; frames are cleaned whole, "
          "no extra buffering)")


if __name__ == "__main__":
    main()
