"""Our page in a real browser: Debian's headless Chromium, a WAV as its microphone, driven over the DevTools
protocol. It starts a conversation with the tiny model; Moshi's words must appear and its voice be played."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import soundfile
from aiohttp.test_utils import TestServer
from helpers import load_pipeline
from serve_helpers import voice_like

from moshi_mlx.server import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (`apt-get install chromium`, .ci/run)")]


class DevTools:
    """Just enough of the DevTools protocol: call a method on a page target, read a value back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params) -> dict:
        number = next(self.ids)
        await self.ws.send_json({"id": number, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == number:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                                 userGesture=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


def _start_chromium(wav: Path, profile: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=900,720", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


async def _page_target(session: aiohttp.ClientSession, port: int) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json") as response:
                targets = await response.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "Chromium's DevTools did not answer"
        await asyncio.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_holds_a_conversation_in_chromium(tiny_model, tmp_path):
    wav = tmp_path / "microphone.wav"
    soundfile.write(wav, voice_like(6.0), 24000, subtype="PCM_16")
    pipeline = load_pipeline(tiny_model)
    lines: list[str] = []
    server = Server(pipeline, log=lines.append)
    server.warm_up()
    debug_port = _free_port()
    browser = _start_chromium(wav, tmp_path / "profile", debug_port)

    async def scenario():
        async with TestServer(server.application(), host="127.0.0.1") as site, aiohttp.ClientSession() as session:
            async with session.ws_connect(await _page_target(session, debug_port), max_msg_size=0) as ws:
                tools = DevTools(ws)
                await tools.call("Page.enable")
                await tools.call("Page.navigate", url=str(site.make_url("/")))
                deadline = time.monotonic() + 30
                while await tools.evaluate("document.readyState") != "complete" or \
                        await tools.evaluate("typeof window.moshi") != "object":
                    assert time.monotonic() < deadline, "the page did not load"
                    await asyncio.sleep(0.2)
                assert await tools.evaluate("document.getElementById('support').hidden") is True
                await tools.evaluate("document.getElementById('toggle').click()")
                state, deadline = {}, time.monotonic() + 90
                while time.monotonic() < deadline:
                    state = await tools.evaluate(
                        "({...JSON.parse(JSON.stringify(window.moshi)), "
                        "text: document.getElementById('text').textContent, "
                        "figures: document.querySelector('dl').innerText})")
                    if state["error"] or (state["words"].strip() and state["framesOut"] >= 25 and state["latencies"]):
                        break
                    await asyncio.sleep(0.5)
                shot = await tools.call("Page.captureScreenshot", format="png")
                (tmp_path / "page.png").write_bytes(base64.b64decode(shot["data"]))
                if os.environ.get("MOSHI_SERVE_SCREENSHOT"):
                    Path(os.environ["MOSHI_SERVE_SCREENSHOT"]).write_bytes(base64.b64decode(shot["data"]))
                await tools.evaluate("document.getElementById('toggle').click()")  # stop
                for _ in range(50):
                    if server.current is None:
                        break
                    await asyncio.sleep(0.1)
                return state

    try:
        state = asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(30)
        server.close()
        pipeline.close()
    print({key: state[key] for key in ("words", "framesIn", "framesReceived", "framesOut", "maxLevelOut", "figures")})
    assert state["error"] is None, (state, lines)
    assert state["connected"] and state["framesIn"] >= 25, state
    assert state["words"].strip() and state["text"].split() == state["words"].split()
    assert state["framesReceived"] >= 25 and abs(state["framesOut"] - state["framesReceived"]) <= 3, state
    assert state["maxLevelOut"] > 1e-3, state
    assert state["latencies"] and 100 < min(state["latencies"]) < 5000, state["latencies"]
    assert "mouth to ear" in state["figures"] and "skipped to keep up" in state["figures"], state["figures"]
    assert any("conversation 1 ended" in line for line in lines), lines
