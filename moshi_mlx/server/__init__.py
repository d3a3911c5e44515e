"""Moshi in a browser or over the network: Kyutai's websocket protocol (`moshi.server` 0.2.13) on our frame loop.

`protocol.py` is Kyutai's framing and the Opus streams, `network.py` a connection as the engine's microphone and
speaker, `conversation.py` one conversation and the limits a client must keep, `web.py` the aiohttp server (one
conversation at a time) and `static/index.html` our page. `moshi-mlx serve` (app/serve.py) runs it.
"""

from .web import Server, serve

__all__ = ["Server", "serve"]
