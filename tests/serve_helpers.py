"""A client written from Kyutai's protocol (sphn's Ogg Opus pages over an aiohttp websocket), and test signals."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp
import numpy as np
import sphn

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE

FRAME_S = FRAME_SIZE / SAMPLE_RATE


def voice_like(seconds: float, seed: int = 0) -> np.ndarray:
    """A tone gliding around 300 Hz under a slow envelope: Opus keeps its waveform (correlation above 0.99), which
    it does not for richer signals at a voice's bit rate."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    start = np.random.default_rng(seed).uniform(0, 2 * np.pi, 2)
    pitch = 300 + 20 * np.sin(2 * np.pi * 0.7 * t + start[0])
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t + start[1])
    return (0.3 * envelope * np.sin(2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE)).astype(np.float32)


def frames_of(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + FRAME_SIZE] for i in range(0, len(x) - FRAME_SIZE + 1, FRAME_SIZE)]


class KyutaiClient:
    """What `moshi.client` does, minus the sound devices: Opus pages of 80 ms frames out, pages and text in."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self.kinds: Counter[int] = Counter()
        self.pcm: list[np.ndarray] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self.stats: list[dict] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.keep_audio = True  # False: count Moshi's audio, keep none (long runs)
        self.samples = 0
        self.frames_sent = 0
        self._sent_at: dict[int, float] = {}  # our frame -> when it was sent (the last few hundred)
        self.round_trips_ms: list[float] = []  # our frame sent -> the page answering it received
        self._task: asyncio.Task | None = None

    async def handshake(self, timeout: float = 120.0) -> bytes:
        message = await self.ws.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        self.kinds[message.data[0]] += 1
        if message.data[0] == 5:
            self.errors.append(message.data[1:].decode())
        return message.data

    def listen(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._receive())

    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.BINARY:
                continue
            kind, payload = message.data[0], message.data[1:]
            self.kinds[kind] += 1
            if kind == 1:
                pcm = np.asarray(self.reader.append_bytes(payload), np.float32)
                self.samples += pcm.size
                if self.keep_audio:
                    self.pcm.append(pcm)
            elif kind == 2:
                self.text.append(payload.decode("utf-8"))
            elif kind == 5:
                self.errors.append(payload.decode("utf-8"))
            elif kind == 0x10:
                self.stats.append(json.loads(payload))
                sent = self._sent_at.pop(self.stats[-1]["answers"], None)
                if sent is not None:
                    self.round_trips_ms.append(1000 * (asyncio.get_running_loop().time() - sent))
        self.close_code = self.ws.close_code
        self.close_reason = getattr(self.ws, "_close_message", "") or ""

    def page(self, frame: np.ndarray) -> bytes:
        return b"\x01" + bytes(self.writer.append_pcm(np.ascontiguousarray(frame, np.float32)))

    async def send_audio(self, audio: np.ndarray, frame_s: float | None = FRAME_S) -> int:
        """Send whole frames, one every `frame_s` (None: all at once); returns how many."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        frames = frames_of(audio)
        for i, frame in enumerate(frames):
            await self.ws.send_bytes(self.page(frame))
            self._sent_at[self.frames_sent] = loop.time()
            self._sent_at.pop(self.frames_sent - 500, None)
            self.frames_sent += 1
            if frame_s is not None:
                await asyncio.sleep(max(0.0, start + (i + 1) * frame_s - loop.time()))
        return len(frames)

    async def finish(self, timeout: float = 30.0) -> None:
        """Close from our side and wait for the receive loop to end."""
        await self.ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout)

    async def closed_by_server(self, timeout: float = 30.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, np.float32)


def aligned_correlation(sent: np.ndarray, got: np.ndarray, most_lag: int = 4 * FRAME_SIZE) -> float:
    """The correlation coefficient of `got` with `sent`, at the delay of `got` (0 to `most_lag` samples) that fits
    best."""
    sent, got = sent.astype(np.float64), got.astype(np.float64)
    size = 1 << (len(sent) + len(got)).bit_length()
    cross = np.fft.irfft(np.fft.rfft(got, size) * np.conj(np.fft.rfft(sent, size)), size)[: most_lag + 1]
    lag = int(np.argmax(cross))
    n = min(len(sent), len(got) - lag)
    return float(np.corrcoef(sent[:n], got[lag : lag + n])[0, 1])
