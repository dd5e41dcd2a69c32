"""Pointing an unmodified discord.py at the offline gateway: the one place that knows its internals.

discord.py builds every REST URL (webhooks and interaction responses included) from the
class attribute ``discord.http.Route.BASE``, and when a ``shard_count`` is given it never
asks ``/gateway/bot`` where to connect: it dials ``DiscordWebSocket.DEFAULT_GATEWAY``. Both
must be set in the process before ``Client.start()``, or the client silently keeps
retrying the real Discord.
"""

from __future__ import annotations

import yarl

__all__ = ["gateway_url_for", "point_discord_py", "point_discord_py_at"]

_WS_SCHEMES = {"http": "ws", "https": "wss"}


def gateway_url_for(api_base: str) -> str:
    """The gateway URL the offline server pairs with ``api_base``: same host and port, path ``/``.

    >>> gateway_url_for("http://127.0.0.1:8123/api/v10")
    'ws://127.0.0.1:8123/'
    """
    url = yarl.URL(api_base)
    if url.scheme not in _WS_SCHEMES or not url.host:
        raise ValueError(f"api_base must be an absolute http(s) URL, got {api_base!r}")
    return str(url.with_scheme(_WS_SCHEMES[url.scheme]).with_path("/").with_query(None).with_fragment(None))


def point_discord_py_at(api_base: str, gateway_url: str | None = None) -> None:
    """Send this process's discord.py REST calls to ``api_base`` and its shards to ``gateway_url``.

    ``gateway_url`` defaults to :func:`gateway_url_for` ``(api_base)``, so the value of
    ``ZMQCROSS_DISCORD_API`` alone is enough. Affects every client created afterwards in
    this process.
    """
    point_discord_py(
        rest=api_base, gateway=gateway_url if gateway_url is not None else gateway_url_for(api_base)
    )


def point_discord_py(*, rest: str | None = None, gateway: str | None = None) -> None:
    """Move discord.py's REST base, its gateway URL, or both (None leaves one where it is)."""
    # Imported here: the gateway server itself must not need discord.py.
    import discord.gateway
    import discord.http

    if rest is not None:
        discord.http.Route.BASE = rest.rstrip("/")
    if gateway is not None:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
