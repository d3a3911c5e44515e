"""`moshi-mlx serve`: Kyutai's protocol on the tiny model, with a client written from that protocol, and clients
that misbehave (each costs its own connection at most: the next client is served)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest
import soundfile
from aiohttp.test_utils import TestServer
from helpers import load_pipeline
from serve_helpers import FRAME_S, KyutaiClient, aligned_correlation, voice_like

from moshi_mlx import FRAME_SIZE
from moshi_mlx.server import Server
from moshi_mlx.server.conversation import MAX_MESSAGE
from moshi_mlx.server.protocol import HANDSHAKE


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    pipeline = load_pipeline(tiny_model)
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="module")
def server(pipeline):
    server = Server(pipeline, log=lambda line: server.lines.append(line))
    server.lines = []
    server.warm_up()
    yield server
    server.close()


def run(scenario, timeout: float = 300):
    return asyncio.run(asyncio.wait_for(scenario, timeout))


@contextlib.asynccontextmanager
async def serving(server: Server):
    async with TestServer(server.application()) as site, aiohttp.ClientSession() as session:
        site.server_object = server
        yield site, session


async def idle(server: Server, timeout: float = 30) -> None:
    """Until the server has finished the conversation in progress (its files closed, its line logged)."""
    deadline = time.monotonic() + timeout
    while server.current is not None:
        assert time.monotonic() < deadline, "the conversation did not end"
        await asyncio.sleep(0.05)


async def connect(site, session, query: str = "") -> KyutaiClient:
    return KyutaiClient(await session.ws_connect(site.make_url(f"/api/chat{query}")))


async def talk(site, session, seconds: float = 1.0) -> KyutaiClient:
    """A short, well-behaved conversation: it must get the handshake, Moshi's voice and its words."""
    client = await connect(site, session)
    assert await client.handshake() == HANDSHAKE
    client.listen()
    await client.send_audio(voice_like(seconds))
    await asyncio.sleep(0.5)
    await client.finish()
    await idle(site.server_object)
    assert client.kinds[1] > 0, client.kinds
    return client


def test_conversation_over_kyutai_protocol(tiny_model, pipeline, tmp_path):
    """Handshake, 80 ms frames both ways, text pieces, the recorded user audio as sent (after Opus), transcript."""
    from moshi_mlx.app.serve import TimedTranscript

    from moshi_mlx.stream.recording import WavRecorder

    files = {}

    def outputs(number):
        files[number] = (tmp_path / f"c{number}.wav", tmp_path / f"c{number}.txt")
        return WavRecorder(files[number][0]), TimedTranscript(files[number][1])

    lines = []
    server = Server(pipeline, outputs=outputs, max_backlog=64, log=lines.append)  # no skipping: all is recorded
    sent = voice_like(4.0)

    async def scenario():
        async with serving(server) as (site, session):
            client = await connect(site, session, "?text_temperature=0.7&text_topk=25&audio_seed=42&stats=1")
            assert await client.handshake() == HANDSHAKE
            client.listen()
            start = time.monotonic()
            count = await client.send_audio(sent)
            took = time.monotonic() - start
            await asyncio.sleep(1.0)
            await client.finish()
            await idle(server)
            return client, count, took

    try:
        client, count, took = run(scenario())
    finally:
        server.close()
    assert took == pytest.approx(count * FRAME_S, abs=0.5)  # sent at 80 ms per frame
    stats = client.stats
    assert stats and stats[-1]["dropped"] == 0
    # Moshi's voice: one page a frame, from its second step, each decoding to a frame.
    assert client.kinds[1] >= len(stats) - 1 >= count // 2, (client.kinds, len(stats), count)
    assert abs(len(client.audio) - client.kinds[1] * FRAME_SIZE) <= FRAME_SIZE
    assert np.sqrt(np.mean(client.audio**2)) > 1e-3
    assert "".join(client.text).strip() and client.kinds[2] == len(client.text)
    assert [s["answers"] for s in stats if s["answers"] is not None][:3] == [0, 1, 2]
    recording, transcript = files[1]
    user, rate = soundfile.read(recording, dtype="float32")
    assert rate == 24000 and user.shape[1] == 2 and len(user) >= (count - 1) * FRAME_SIZE
    assert aligned_correlation(sent, user[:, 0]) >= 0.99
    assert transcript.read_text().strip()
    assert any("conversation 1 ended" in line for line in lines), lines


def test_second_client_is_told_busy_then_served(server):
    async def scenario():
        async with serving(server) as (site, session):
            first = await connect(site, session)
            assert await first.handshake() == HANDSHAKE
            first.listen()
            second = await connect(site, session)
            message = await second.handshake(timeout=10)
            closed = await second.ws.receive(timeout=10)
            await first.send_audio(voice_like(0.8))
            await asyncio.sleep(0.4)
            await first.finish()
            await idle(server)
            third = await talk(site, session, 0.8)
            return first, message, closed, third

    first, message, closed, third = run(scenario())
    assert message[0] == 5 and b"busy" in message
    assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    assert first.kinds[1] > 0  # the first conversation went on
    assert sum("busy" in line for line in server.lines) >= 1


@pytest.mark.parametrize("bad", ["empty", "unknown kind", "text message"])
def test_ignored_messages_cost_one_log_line(server, bad):
    message = {"empty": b"", "unknown kind": b"\x07hello", "text message": "hello"}[bad]

    async def scenario():
        async with serving(server) as (site, session):
            client = await connect(site, session)
            await client.handshake()
            client.listen()
            for _ in range(3):
                await (client.ws.send_str(message) if isinstance(message, str) else client.ws.send_bytes(message))
            await client.send_audio(voice_like(0.8))
            await asyncio.sleep(0.4)
            await client.finish()
            await idle(server)
            return client

    before = len(server.lines)
    client = run(scenario())
    assert client.kinds[1] > 0  # the conversation went on
    warnings = [line for line in server.lines[before:] if "ignored" in line]
    assert len(warnings) == 1, server.lines[before:]


@pytest.mark.parametrize("bad", ["garbage", "too big", "faster than real time", "disconnect mid-page"])
def test_bad_client_costs_its_own_connection(server, bad):
    rng = np.random.default_rng(0)

    async def misbehave(client: KyutaiClient) -> None:
        if bad == "garbage":
            await client.ws.send_bytes(b"\x01" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        elif bad == "too big":
            await client.ws.send_bytes(b"\x01" + bytes(MAX_MESSAGE + 10))
        elif bad == "faster than real time":
            await client.send_audio(voice_like(12.0), frame_s=None)
        else:
            page = client.page(voice_like(0.08))
            await client.ws.send_bytes(page)
            await client.ws.send_bytes(page[: len(page) // 2])
            client.ws._response.connection.transport.abort()  # gone mid-page, no closing handshake

    async def scenario():
        async with serving(server) as (site, session):
            client = await connect(site, session)
            await client.handshake()
            client.listen()
            await client.send_audio(voice_like(0.4))
            await misbehave(client)
            with contextlib.suppress(Exception):
                await client.closed_by_server()
            await idle(server)  # the server is free again
            next_client = await talk(site, session, 0.8)
            return client, next_client

    before = len(server.lines)
    client, next_client = run(scenario())
    ended = [line for line in server.lines[before:] if "ended" in line]
    assert len(ended) == 2, server.lines[before:]
    if bad != "disconnect mid-page":
        assert client.close_code in (1007, 1008, 1009), (client.close_code, server.lines[before:])
        reason = {"garbage": "not Ogg Opus", "too big": "", "faster than real time": "faster than real time"}[bad]
        assert reason in ended[0], ended
    assert next_client.kinds[1] > 0


def test_token_is_asked_when_set(pipeline):
    server = Server(pipeline, token="s3cret-token", log=lambda line: None)

    async def scenario():
        async with serving(server) as (site, session):
            refused = await session.get(site.make_url("/api/chat"))
            wrong = await session.get(site.make_url("/api/chat?token=guess"))
            client = await connect(site, session, "?token=s3cret-token")
            data = await client.handshake()
            await client.ws.close()
            return refused.status, wrong.status, data

    try:
        assert run(scenario()) == (403, 403, HANDSHAKE)
    finally:
        server.close()


@pytest.mark.parametrize("static", ["page", None, "folder"])
def test_page(pipeline, static, tmp_path):
    """Our page; no page (`--static none`); or a folder served as Kyutai's server serves its client's build."""
    if static == "folder":
        (tmp_path / "assets").mkdir()
        (tmp_path / "index.html").write_text("<html>Kyutai's client</html>")
        (tmp_path / "assets" / "app.js").write_text("console.log(1)")
    server = Server(pipeline, static=tmp_path if static == "folder" else static, log=lambda line: None)

    async def scenario():
        async with serving(server) as (site, session):
            response = await session.get(site.make_url("/"))
            asset = await session.get(site.make_url("/assets/app.js"))
            return response.status, response.content_type, await response.text(), asset.status

    try:
        status, kind, text, asset = run(scenario())
    finally:
        server.close()
    if static is None:
        assert status == 404
    elif static == "folder":
        assert (status, text, asset) == (200, "<html>Kyutai's client</html>", 200)
    else:
        assert status == 200 and kind == "text/html" and "getUserMedia" in text and "AudioWorklet" in text


def test_other_hosts_need_ssl(capsys):
    from moshi_mlx.app import cli

    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "--host", "0.0.0.0"])
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 lets other machines connect: give --ssl DIR") and err.count("\n") == 1


def test_serve_command_ctrl_c_keeps_the_files_and_exits_0(tiny_model, tmp_path):
    """The command itself: it says where it listens, holds a conversation, and Ctrl-C ends it with the files kept."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx", "serve", "--port", str(port), "--transcript-dir", str(tmp_path / "t"),
         "--record-dir", str(tmp_path / "r"), "--seed", "1",
         *tiny_model.cli_args()],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "ready at" in line:
                break
        assert any(f"http://localhost:{port}/" in line for line in lines), lines

        async def scenario():
            async with aiohttp.ClientSession() as session:
                client = KyutaiClient(await session.ws_connect(f"http://localhost:{port}/api/chat"))
                assert await client.handshake() == HANDSHAKE
                client.listen()
                await client.send_audio(voice_like(1.5))
                process.send_signal(signal.SIGINT)  # mid-conversation
                await client.closed_by_server()
                return client

        client = run(scenario())
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    lines += process.stderr.read().splitlines()
    assert code == 0, lines
    assert client.close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert any("shutting down" in line for line in lines), lines
    (recording,) = (tmp_path / "r").iterdir()
    (transcript,) = (tmp_path / "t").iterdir()
    assert soundfile.info(recording).frames >= FRAME_SIZE and transcript.read_text().strip()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@pytest.mark.slow
def test_soak_through_the_websocket(pipeline):
    """Ten minutes of conversation over the socket (MOSHI_SERVE_SOAK_MINUTES to change): memory stays flat, and
    every frame the client sent was either processed or counted as skipped by the lag policy.

    The codec is a lossless stand-in of bounded state: what is measured is the server's own memory (rustymimi's
    caches grow until renewed, which docs/long-conversations.md measures on its own).
    """
    from moshi_mlx import Pipeline
    from moshi_mlx.devtools.process_memory import current_rss_bytes
    from moshi_mlx.devtools.stand_ins import LabelCodec

    minutes = float(os.environ.get("MOSHI_SERVE_SOAK_MINUTES", "10"))
    lines = []
    server = Server(Pipeline(pipeline.gen, LabelCodec(), pipeline.tokenizer), log=lines.append)
    server.warm_up()
    chunk = voice_like(8.0)
    memory = []

    async def scenario():
        async with serving(server) as (site, session):
            client = await connect(site, session, "?stats=1")
            assert await client.handshake() == HANDSHAKE
            client.keep_audio = False
            client.listen()
            sent, end = 0, time.monotonic() + 60 * minutes
            while time.monotonic() < end:
                sent += await client.send_audio(chunk)
                memory.append((time.monotonic(), current_rss_bytes()))
                client.stats = client.stats[-1:]
                client.round_trips_ms = client.round_trips_ms[-2000:]
            await asyncio.sleep(1.0)
            await client.finish(timeout=60)
            await idle(server, timeout=120)
            return client, sent, server.last

    try:
        client, sent, conversation = run(scenario(), timeout=60 * minutes + 300)
    finally:
        server.close()
    stats = conversation.result
    assert stats.processed + stats.dropped == sent, (stats.processed, stats.dropped, sent)
    # Flat: no higher peak in the last stretch than in the one before (the codec's ring of frames is full by then).
    start = memory[0][0]
    per_minute = [max((rss for at, rss in memory if m * 60 <= at - start < (m + 1) * 60), default=0) / 2**20
                  for m in range(int(minutes) + 1)]
    cut = [start + 60 * minutes * f for f in (0.4, 0.7)]
    before = max((rss for at, rss in memory if cut[0] <= at < cut[1]), default=memory[0][1])
    last = max((rss for at, rss in memory if at >= cut[1]), default=memory[-1][1])
    growth = (last - before) / 2**20
    print(f"soak: {minutes:g} min, {sent} frames sent, {stats.processed} processed, {stats.dropped} skipped; memory "
          f"peaks by minute (MiB) {[round(m) for m in per_minute]}, last stretch {growth:+.1f} MiB; server latency "
          f"{stats.latency.describe()}; round trip through the socket, median of the last "
          f"{len(client.round_trips_ms)} frames: {np.median(client.round_trips_ms):.0f} ms")
    assert growth < 64, growth


def test_ssl_folder_and_address(tmp_path, capsys):
    """--ssl needs cert.pem and key.pem (one line when not); with them, an https context and an https address that
    carries the token."""
    from moshi_mlx.app import cli
    from moshi_mlx.app.serve import address, parse_args

    from moshi_mlx.server.web import ssl_context

    with pytest.raises(SystemExit) as exit:
        cli.main(["serve", "--host", "0.0.0.0", "--ssl", str(tmp_path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "has no cert.pem and no key.pem" in err and err.count("\n") == 1
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=moshi",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    assert ssl_context(tmp_path) is not None
    args = parse_args(["--host", "0.0.0.0", "--ssl", str(tmp_path), "--port", "9000"])
    assert address(args, "abcdefgh12").startswith("https://") and address(args, "abcdefgh12").endswith(
        ":9000/?token=abcdefgh12")


def test_a_persona_is_fed_before_each_conversations_handshake(tiny_persona_model):
    """PersonaPlex through `serve`: every conversation starts with the persona read, before the client is told
    the model is ready."""
    from moshi_mlx.persona.session import Persona

    pipeline = load_pipeline(tiny_persona_model)
    pipeline.persona = Persona.make(pipeline.tokenizer, "You are a pirate.", None)
    order = []
    feed = pipeline.new_conversation
    pipeline.new_conversation = lambda *a, **k: order.append(("prefill", pipeline.gen.step_index)) or feed(*a, **k)
    server = Server(pipeline, log=lambda line: None)
    server.warm_up()

    async def scenario():
        async with serving(server) as (site, session):
            for _ in range(2):
                client = await connect(site, session)
                assert await client.handshake() == HANDSHAKE
                order.append(("handshake", pipeline.ready))
                client.listen()
                await client.send_audio(voice_like(0.5))
                await client.finish()
                await idle(server)

    try:
        run(scenario())
    finally:
        server.close()
        pipeline.close()
    assert [what for what, _ in order] == ["prefill", "handshake"] * 2, order
    assert all(ready for what, ready in order if what == "handshake"), order


def test_serve_refuses_a_persona_for_moshi_in_one_line(tiny_model, capsys):
    from moshi_mlx.app import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--persona", "You are a pirate.", *tiny_model.cli_args()])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and "persona" in err[0]
