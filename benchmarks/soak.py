"""A long conversation, through the file path and through the live engine: does anything grow or slow down?

    python benchmarks/soak.py --minutes 60 [--mode file|live|both] [--json soak.json]

Tiny random LM, full-size random Mimi (rustymimi, renewed as in a real conversation). The file path plays N
minutes of speech through `run_frames` (pipelined, nothing kept per frame); the live path runs the engine N
minutes on a private PulseAudio server (`moshi_mlx.devtools.virtual_audio`, Linux) with speech looping into its
microphone. Both report the resident memory after the warm-up (the first minute) and at the end, its peak, the
per-frame time in the first and the last minute, Mimi's renewals and the frames dropped to keep up: at each renewal
(from a successor's start to 2 s after it took over) and per minute away from renewals. The live path also reports
the mouth-to-ear latency and its drift: the medians of the first and the last ten minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile

from moshi_mlx import SAMPLE_RATE, Engine, Pipeline, run_frames
from moshi_mlx.devtools.process_memory import current_rss_bytes
from moshi_mlx.devtools.tiny_model import write_tiny_model
from moshi_mlx.devtools.virtual_audio import VirtualAudio, reinitialise_portaudio, speech_wav
from moshi_mlx.stream.recording import TranscriptWriter, WavRecorder


def rss_mb() -> float:
    return current_rss_bytes() / 2**20


class Probe:
    """Resident memory and per-frame cost over time, sampled as frames complete."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds, MB)
        self.frames: list[tuple[float, float]] = []  # (seconds, frame ms) of the first and last minute only
        self._last = self.start
        self._next_sample = 0.0
        self._tail: list[tuple[float, float]] = []
        self.count = 0
        # (seconds, process CPU seconds, frames): the CPU a frame costs does not depend on what else the machine runs
        self.cpu: list[tuple[float, float, int]] = []

    def frame(self, cost_ms: float | None = None) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        cost = (now - self._last) * 1000 if cost_ms is None else cost_ms
        self._last = now
        if elapsed < 60:
            self.frames.append((elapsed, cost))
        self._tail.append((elapsed, cost))
        while self._tail and self._tail[0][0] < elapsed - 60:
            self._tail.pop(0)
        self.count += 1
        if elapsed >= self._next_sample:
            self.samples.append((elapsed, rss_mb()))
            self.cpu.append((elapsed, time.process_time(), self.count))
            self._next_sample = elapsed + 5

    def cpu_per_frame(self, seconds: float, after: int | None = None, before: float | None = None) -> float | None:
        """CPU ms per frame over `seconds` from the first sample past `after` frames, or up to the time `before`."""
        if after is not None:
            start = next((c for c in self.cpu if c[2] > after), None)
            stop = next((c for c in self.cpu if start and c[0] >= start[0] + seconds), None)
        else:
            start = next((c for c in self.cpu if c[0] >= before - seconds), None)
            stop = self.cpu[-1] if self.cpu else None
        if start is None or stop is None or stop[2] <= start[2]:
            return None
        return 1000 * (stop[1] - start[1]) / (stop[2] - start[2])

    def report(self, name: str, renewals: int, dropped: int, frames: int, skipped: dict) -> dict:
        self.samples.append((time.monotonic() - self.start, rss_mb()))
        after_warmup = next((mb for s, mb in self.samples if s >= 60), self.samples[-1][1])
        first = statistics.median(cost for _, cost in self.frames[25:]) if len(self.frames) > 25 else float("nan")
        last = statistics.median(cost for _, cost in self._tail) if self._tail else float("nan")
        # The peaks of the first and the last 10 minutes (renewal makes memory a sawtooth)
        end = self.samples[-1][0]
        early = [mb for s, mb in self.samples if 60 <= s < 660] or [after_warmup]
        late = [mb for s, mb in self.samples if s >= max(60, end - 600)] or [self.samples[-1][1]]
        result = dict(
            path=name, minutes=round(end / 60, 1), frames=frames, renewals=renewals, dropped=dropped,
            rss_after_warmup_mb=round(after_warmup, 1), rss_end_mb=round(self.samples[-1][1], 1),
            rss_peak_mb=round(max(mb for _, mb in self.samples), 1),
            peak_first_10min_mb=round(max(early), 1), peak_last_10min_mb=round(max(late), 1),
            frame_ms_first_minute=round(first, 2), frame_ms_last_minute=round(last, 2),
            drift_pct=round(100 * (last - first) / first, 1), **skipped,
        )
        # CPU milliseconds per frame (all the process's threads, so what else the machine runs does not count), over
        # the first and the last minute and, renewals being every 2 minutes of audio, the first and the last ten
        for minutes in (1, 10):
            first_cpu = self.cpu_per_frame(60 * minutes, after=25)
            last_cpu = self.cpu_per_frame(60 * minutes, before=end)
            if first_cpu is not None and last_cpu is not None:
                result[f"cpu_ms_first_{minutes}min"] = round(first_cpu, 2)
                result[f"cpu_ms_last_{minutes}min"] = round(last_cpu, 2)
                result[f"cpu_drift_{minutes}min_pct"] = round(100 * (last_cpu - first_cpu) / first_cpu, 1)
        print(json.dumps(result), flush=True)
        # Resident memory minute by minute (the lowest and the highest sample of each), for --json
        minutes = {}
        for s, mb in self.samples:
            low, high = minutes.get(int(s // 60), (mb, mb))
            minutes[int(s // 60)] = (min(low, mb), max(high, mb))
        result["rss_by_minute_mb"] = [[m, round(low), round(high)] for m, (low, high) in sorted(minutes.items())]
        return result


class Renewals:
    """The frames skipped during each of the codec's renewals (overlapping ones as one) and away from them."""

    GRACE_S = 2.0  # a frame the loop fell behind on is skipped a little after the renewal that delayed it

    def __init__(self, codec) -> None:
        self.codec = codec
        self.start = time.monotonic()
        self.windows: list[dict] = []  # what, start_s, seconds, skipped
        self._end: float | None = None  # the last window's takeover (None while it lasts)
        self._dropped = 0
        self.skipped_away = 0
        self.frame_ms: dict[bool, list[float]] = {True: [], False: []}  # the frame's cost, at renewals or not

    def frame(self, dropped: int, frame_ms: float = 0.0) -> None:
        now = time.monotonic() - self.start
        skipped, self._dropped = dropped - self._dropped, dropped
        renewing = getattr(self.codec, "renewing", [])
        last = self.windows[-1] if self.windows else None
        if renewing and (last is None or (self._end is not None and now > self._end + self.GRACE_S)):
            last = dict(what="+".join(renewing), start_s=round(now, 1), seconds=0.0, skipped=0)
            self.windows.append(last)
            self._end = None
        elif renewing and last is not None:
            self._end = None
            last["what"] = "+".join(dict.fromkeys(last["what"].split("+") + renewing))
        elif last is not None and self._end is None:
            self._end = now
            last["seconds"] = round(now - last["start_s"], 1)
        at_renewal = last is not None and (self._end is None or now <= self._end + self.GRACE_S)
        if at_renewal:
            last["skipped"] += skipped
        else:
            self.skipped_away += skipped
        self.frame_ms[at_renewal].append(frame_ms)

    def report(self) -> dict:
        if self.windows and self._end is None:  # one still in progress
            self.windows[-1]["seconds"] = round(time.monotonic() - self.start - self.windows[-1]["start_s"], 1)
        cost = {}
        for at_renewal, name in ((True, "at_renewals"), (False, "away")):
            if len(values := sorted(self.frame_ms[at_renewal])) > 10:
                cost[f"frame_ms_{name}"] = [round(values[len(values) // 2], 1), round(values[len(values) * 9 // 10], 1)]
        away_min = (time.monotonic() - self.start - sum(w["seconds"] + self.GRACE_S for w in self.windows)) / 60
        return dict(skipped_at_renewals=[w["skipped"] for w in self.windows], skipped_away=self.skipped_away,
                    skipped_per_minute_away=round(self.skipped_away / max(away_min, 1e-9), 2),
                    **cost, renewal_windows=self.windows)


def load(model_dir: Path) -> Pipeline:
    return write_tiny_model(model_dir).load_pipeline(seed=0)


def speech(directory: Path) -> Path:
    return speech_wav(directory / "speech.wav", "Hello Moshi. Can you hear me? Tell me about the weather today, "
                      "and what I should wear for a long walk by the river. " * 4)


def soak_file(minutes: float, directory: Path) -> dict:
    pipeline = load(directory)
    voice, _ = soundfile.read(str(speech(directory)), dtype="float32")
    samples = int(minutes * 60 * SAMPLE_RATE)
    audio = np.tile(voice, samples // len(voice) + 1)[:samples]
    probe, renewals = Probe(), Renewals(pipeline.codec)

    def on_event(event) -> None:
        probe.frame()
        renewals.frame(event.dropped)

    recorder = WavRecorder(directory / "out.wav", stereo=True)
    transcript = TranscriptWriter(directory / "out.txt")
    result = run_frames(pipeline, audio, on_event=on_event, recorder=recorder, transcript=transcript, keep=False)
    recorder.close()
    transcript.close()
    report = probe.report("file", pipeline.codec.renewals, 0, result.frames, renewals.report())
    pipeline.close()
    return report


def soak_live(minutes: float, directory: Path) -> dict:
    server = VirtualAudio().start()
    os.environ.update(PULSE_SERVER=server.env["PULSE_SERVER"], XDG_RUNTIME_DIR=server.env["XDG_RUNTIME_DIR"])
    reinitialise_portaudio()
    pipeline = load(directory)
    wav = speech(directory)
    probe, renewals = Probe(), Renewals(pipeline.codec)
    stop = threading.Event()

    def on_event(event) -> None:
        probe.frame(event.frame_ms)
        renewals.frame(event.dropped, event.frame_ms)

    latencies: list = []  # the LatencySample of every frame that reached the speaker

    def talk() -> None:
        while not stop.is_set():
            player = server.play(wav)
            while player.poll() is None and not stop.is_set():
                time.sleep(0.2)
            player.terminate()

    engine = Engine(pipeline, on_event=on_event,
                    recorder=WavRecorder(directory / "live.wav", stereo=True),
                    transcript=TranscriptWriter(directory / "live.txt"))
    talker = threading.Thread(target=talk, daemon=True)
    engine.latency.on_sample = latencies.append
    try:
        with engine:
            talker.start()
            time.sleep(minutes * 60)
        stats = engine.stats()
    finally:
        stop.set()
        server.stop()
    report = probe.report("live", pipeline.codec.renewals, stats.dropped, stats.processed, renewals.report())
    report.update(latency_report(latencies, stats))
    print(json.dumps({key: value for key, value in report.items() if key.startswith("latency")}), flush=True)
    pipeline.close()
    return report


def latency_report(latencies: list, stats) -> dict:
    """Mouth-to-ear latency: median, p90, max, its parts, and the medians of the first and the last ten minutes
    (of the first and the last half when shorter), with each part's, and their difference: the drift."""
    if not latencies:
        return {"latency_frames": 0}
    at = np.array([sample.at for sample in latencies])
    ms = np.array([sample.total_ms for sample in latencies])
    span = min(600.0, (at[-1] - at[0]) / 2)
    first, last = at <= at[0] + span, at >= at[-1] - span

    def parts(window: np.ndarray) -> dict[str, float]:
        chosen = [sample for sample, inside in zip(latencies, window, strict=True) if inside]
        return {name: round(float(np.median([s.parts[name] for s in chosen])), 1) for name in chosen[0].parts}

    return dict(
        latency_frames=len(ms), latency_median_ms=round(float(np.median(ms)), 1),
        latency_p90_ms=round(float(np.percentile(ms, 90)), 1), latency_max_ms=round(float(ms.max()), 1),
        latency_parts_ms=stats.latency.parts_ms, latency_window_min=round(span / 60, 1),
        latency_first_ms=round(float(np.median(ms[first])), 1), latency_last_ms=round(float(np.median(ms[last])), 1),
        latency_drift_ms=round(float(np.median(ms[last]) - np.median(ms[first])), 1),
        latency_parts_first_ms=parts(first), latency_parts_last_ms=parts(last),
        underruns=stats.underruns, output_trimmed=stats.output_trimmed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--mode", choices=["file", "live", "both"], default="both")
    parser.add_argument("--json", default=None, help="write the reports here")
    parser.add_argument("--dir", default=None, help="folder for the model and outputs (default: a temporary one)")
    args = parser.parse_args()
    # Renewals that waited for a successor, or started beside another one, say so on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("moshi_mlx.codec.renewal").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        reports = []
        if args.mode in ("file", "both"):
            reports.append(soak_file(args.minutes, directory))
        if args.mode in ("live", "both"):
            reports.append(soak_live(args.minutes, directory))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
