"""The aiohttp server: Kyutai's websocket at `/api/chat`, our page at `/`, one conversation at a time."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from aiohttp import WSCloseCode, web

from ..errors import MoshiError, first_line
from ..stream.pipeline import Pipeline
from . import protocol
from .conversation import MAX_MESSAGE, Conversation, Outputs

BUSY = "Moshi is busy: another conversation is in progress. Try again when it ends."
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ssl_context(directory: str | Path) -> ssl.SSLContext:
    """An https context from `cert.pem` and `key.pem` in `directory`, as Kyutai's server reads them."""
    directory = Path(directory).expanduser()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile=directory / "cert.pem", keyfile=directory / "key.pem")
    except (OSError, ssl.SSLError) as e:
        raise MoshiError(f"cannot use {directory}/cert.pem and key.pem for --ssl: {first_line(e)}") from None
    return context


def page_path() -> Path:
    """Our page, a data file of this package."""
    return Path(str(resources.files(__package__) / "static" / "index.html"))


class Server:
    """One model served over Kyutai's protocol, to one client at a time; others are told it is busy.

    All the model's work runs on one thread (`inference`: by default a thread of its own; `moshi-mlx serve` gives
    the main thread, `main_thread.py`), conversation after conversation. `static`: our page
    (default), a directory served as Kyutai's server serves one (its `index.html` at `/`), or None for no page.
    `token`: when set, `/api/chat` needs `?token=...` and answers 403 without it.
    """

    def __init__(self, pipeline: Pipeline, token: str | None = None, static: Path | None | str = "page",
                 outputs: Outputs | None = None, max_backlog: int = 2, log: Callable[[str], None] = print,
                 inference: Executor | None = None):
        self.pipeline, self.token, self.static, self.outputs = pipeline, token, static, outputs
        self.max_backlog, self.log = max_backlog, log
        self.inference = inference or ThreadPoolExecutor(max_workers=1, thread_name_prefix="moshi-inference")
        self.current: Conversation | None = None
        self.last: Conversation | None = None  # the last conversation that ended (its `result`)
        self.conversations = 0
        self.refused = 0

    def warm_up(self) -> None:
        """Compile and allocate on the inference thread before the first client (it answers sooner)."""
        self.inference.submit(self.pipeline.warmup).result()

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/chat", self.chat)
        if self.static == "page":
            app.router.add_get("/", self.page)
        elif self.static is not None:
            directory = Path(self.static)

            async def index(request: web.Request) -> web.StreamResponse:
                return web.FileResponse(directory / "index.html")

            app.router.add_get("/", index)
            app.router.add_static("/", directory, follow_symlinks=True)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(page_path(), headers={"Cache-Control": "no-store"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        if self.token is not None and not secrets.compare_digest(request.query.get("token", ""), self.token):
            self.log(f"refused {peer}: no valid token")
            return web.Response(status=403, text="forbidden: use the URL with the token that the server printed\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        if self.current is not None:
            self.refused += 1
            self.log(f"refused {peer}: busy with conversation {self.current.number}")
            await ws.send_bytes(protocol.error(BUSY))
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"busy: another conversation is in progress")
            return ws
        self.conversations += 1
        conversation = Conversation(ws, self.pipeline, self.conversations, self.inference, self.log, self.outputs,
                                    self.max_backlog, protocol.wants_stats(request.query))
        self.current = conversation
        self.log(f"conversation {conversation.number} with {peer}")
        try:
            await conversation.run()
        except Exception as e:  # e.g. its files cannot be written: this client only
            self.log(f"conversation {conversation.number} failed: {first_line(e)}")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"the server failed: see its log")
        finally:
            self.current, self.last = None, conversation
            if conversation.result is not None:
                self._log_end(conversation)
        return ws

    def _log_end(self, conversation: Conversation) -> None:
        stats = conversation.result
        assert stats is not None
        why = f" ({conversation.ended})" if conversation.ended else ""
        seconds = time.monotonic() - conversation.started
        self.log(f"conversation {conversation.number} ended{why} after {seconds:.1f} s: {stats.processed} frames, "
                 f"{stats.dropped} skipped to keep up; server latency {stats.latency.describe()}")

    async def _on_shutdown(self, app: web.Application) -> None:
        conversation = self.current
        if conversation is not None:
            conversation.close("the server is shutting down")
            while self.current is conversation:  # its files are closed when it is over
                await asyncio.sleep(0.05)

    def close(self) -> None:
        self.inference.shutdown(wait=True)


async def serve(server: Server, host: str, port: int, context: ssl.SSLContext | None = None,
                on_ready: Callable[[], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM (or `stop` is set), then end the live conversation and return."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
    runner = web.AppRunner(server.application(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as e:
            raise MoshiError(f"cannot listen on {host}:{port}: {e.strerror or e}: choose another --port") from None
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
