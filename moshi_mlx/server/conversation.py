"""One conversation over one websocket: the client's Opus in, the engine's frames out, the limits that keep a bad
client from costing more than its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..codec import FRAME_S, SAMPLE_RATE
from ..errors import first_line
from ..stream.engine import Engine, EngineStats
from ..stream.pipeline import FrameEvent, Pipeline
from . import protocol
from .network import NetworkDevices

MAX_MESSAGE = 1 << 16  # bytes: an 80 ms Opus page is well under 1 KiB
BYTES_PER_S = 32_000  # the most Opus a client may send on average (256 kbit/s, several times a voice's)
BURST_BYTES = 1 << 18  # ... plus this much at once
MAX_AHEAD_S = 4.0  # audio ahead of the time since the client connected that ends the connection
MAX_UNSENT = 64  # Moshi's frames waiting for a client that does not read (5 s) end the connection
CLOSE_TIMEOUT_S = 2.0

Outputs = Callable[[int], tuple[Any, Any]]  # conversation number -> (recorder or None, transcript or None)


class Conversation:
    """Run by the server for a client that got the model: `await run()` returns once it is over and its files
    are closed; `close(reason)` ends it from outside (Ctrl-C, shutdown)."""

    def __init__(self, ws: web.WebSocketResponse, pipeline: Pipeline, number: int, inference: Executor,
                 log: Callable[[str], None], outputs: Outputs | None = None, max_backlog: int = 2,
                 stats: bool = False):
        self.ws, self.pipeline, self.number, self.inference = ws, pipeline, number, inference
        self.log, self.outputs, self.max_backlog, self.want_stats = log, outputs, max_backlog, stats
        self.ended: str | None = None  # why the conversation ended, when the server ended it
        self.result: EngineStats | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing: asyncio.Queue[tuple[bytes, object] | None] = asyncio.Queue()
        self._unsent = 0  # audio messages queued, not yet written
        self._answers: int | None = None  # the client's frame that the last page answers (decoder thread)
        self._warned: set[str] = set()
        self._received = 0  # bytes
        self.started = time.monotonic()

    # --- the engine's side (decoder thread) ---

    def _post(self, message: bytes, tag: object = None) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening any more
            self._loop.call_soon_threadsafe(self._enqueue, message, tag)

    def _send_audio(self, page: bytes, tag: object, answers: int | None) -> None:
        self._answers = answers
        self._post(protocol.audio(page), tag if tag is not None else False)

    def _on_event(self, event: FrameEvent) -> None:
        if event.text:
            self._post(protocol.text(event.text))
        if self.want_stats:
            answers, self._answers = self._answers, None
            self._post(protocol.stats({
                "step": event.index, "answers": answers, "backlog": event.backlog, "dropped": event.dropped,
                "lm_ms": round(event.lm_ms, 1), "frame_ms": round(event.frame_ms, 1),
                "latency_ms": None if event.latency_ms is None else round(event.latency_ms),
                "in": round(event.input_level, 4), "out": round(event.output_level, 4), "notice": event.notice,
            }))

    # --- the event loop's side ---

    def _enqueue(self, message: bytes, tag: object) -> None:
        if self.ended is not None:
            return
        if tag is not None:  # Moshi's audio
            self._unsent += 1
            if self._unsent > MAX_UNSENT:
                self._end(f"the client does not read ({MAX_UNSENT * FRAME_S:.0f} s of Moshi's voice unsent)",
                          WSCloseCode.POLICY_VIOLATION)
                return
        self._outgoing.put_nowait((message, tag))

    async def _send_loop(self, devices: NetworkDevices) -> None:
        while (item := await self._outgoing.get()) is not None:
            message, tag = item
            try:
                await self.ws.send_bytes(message)
            except Exception:  # the client left (or the socket failed): what is left is not sent
                self._end("the connection was lost")
                return
            if tag is not None:
                self._unsent -= 1
                devices.sent(tag or None)

    def _warn_once(self, what: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.log(f"conversation {self.number}: {what} (ignored)")

    def _end(self, reason: str, code: int = WSCloseCode.OK) -> None:
        """End the conversation (the receive loop then stops): `reason` is logged once, sent as the close reason."""
        if self.ended is None:
            self.ended = reason
            assert self._loop is not None
            self._loop.create_task(self.ws.close(code=code, message=reason.encode("utf-8")[:120]))

    def close(self, reason: str) -> None:
        self._end(reason, WSCloseCode.GOING_AWAY)

    def _take_audio(self, payload: bytes, opus: protocol.OpusFrames, devices: NetworkDevices) -> None:
        # Measured from the connection: audio a client sent while Moshi warmed up is not ahead of real time.
        elapsed = time.monotonic() - self.started
        self._received += len(payload)
        if self._received > BURST_BYTES + BYTES_PER_S * elapsed:
            self._end(f"the client sends more than {BYTES_PER_S // 1000} kB/s", WSCloseCode.POLICY_VIOLATION)
            return
        try:
            frames = opus(payload)
        except ValueError as e:
            self._end(f"the client's audio is not Ogg Opus ({first_line(e)})", WSCloseCode.INVALID_TEXT)
            return
        first = opus.frames - len(frames)
        for i, frame in enumerate(frames):
            devices.put(frame, first + i)
        if opus.samples / SAMPLE_RATE > elapsed + MAX_AHEAD_S:
            self._end(f"the client sends audio faster than real time ({opus.samples / SAMPLE_RATE:.1f} s in "
                      f"{elapsed:.1f} s)", WSCloseCode.POLICY_VIOLATION)

    async def _receive_loop(self, devices: NetworkDevices) -> None:
        opus = protocol.OpusFrames()
        async for message in self.ws:
            if self.ended is not None:
                break
            if message.type == WSMsgType.ERROR:
                self._end(f"connection error: {first_line(self.ws.exception())}", WSCloseCode.PROTOCOL_ERROR)
                break
            if message.type != WSMsgType.BINARY:
                self._warn_once(f"a message of type {message.type.name}")
                continue
            data: bytes = message.data
            if not data:
                self._warn_once("an empty message")
            elif data[0] != protocol.AUDIO:
                self._warn_once(f"a message of unknown kind {data[0]}")
            else:
                self._take_audio(data[1:], opus, devices)

    async def _watch(self, engine: Engine) -> None:
        """End the conversation when the engine stops by itself (an error on the inference thread)."""
        while engine.running:
            await asyncio.sleep(0.2)
        self._end("Moshi stopped (an error: see the server's log)", WSCloseCode.INTERNAL_ERROR)

    async def run(self) -> EngineStats | None:
        """Start the engine (warm-up), say so (the handshake), converse until either side ends, close the files."""
        self._loop = loop = asyncio.get_running_loop()
        devices = NetworkDevices(self._send_audio)
        recorder, transcript = self.outputs(self.number) if self.outputs is not None else (None, None)
        engine = Engine(self.pipeline, devices=devices, executor=self.inference, max_backlog=self.max_backlog,
                        on_event=self._on_event, recorder=recorder, transcript=transcript)
        try:
            await loop.run_in_executor(None, engine.start)
        except Exception as e:
            await loop.run_in_executor(None, self._stop, engine)
            self.log(f"conversation {self.number}: Moshi could not start: {first_line(e)}")
            with contextlib.suppress(Exception):
                await self.ws.send_bytes(protocol.error(f"Moshi could not start: {first_line(e)}"))
            await self.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"Moshi could not start")
            return None
        sender = loop.create_task(self._send_loop(devices))
        watcher = loop.create_task(self._watch(engine))
        try:
            if self.ended is None:
                await self.ws.send_bytes(protocol.HANDSHAKE)
                await self._receive_loop(devices)
        finally:
            watcher.cancel()
            stopping = loop.run_in_executor(None, self._stop, engine)
            try:
                self.result = await asyncio.shield(stopping)
            except asyncio.CancelledError:  # the client left and the server cancels its handler: close the files
                self.result = await stopping
                raise
            self._outgoing.put_nowait(None)  # after the last frame's messages (posted before stop returned)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender, CLOSE_TIMEOUT_S)
            sender.cancel()
            await self.ws.close()
        return self.result

    def _stop(self, engine: Engine) -> EngineStats:
        """Stop the engine (its files are closed either way); an error of the conversation is logged here."""
        try:
            return engine.stop()
        except Exception as e:
            self.log(f"conversation {self.number}: Moshi stopped on an error: {first_line(e)}")
            return engine.stats()
