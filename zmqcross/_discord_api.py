"""The few Discord REST calls zmqcross makes itself, and where they go.

``ZMQCROSS_DISCORD_API`` (the offline gateway), ``ZMQCROSS_DISCORD_REST`` (a REST proxy)
or an explicit ``api_base`` points them at another server; without any they go to Discord.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import aiohttp

from .errors import ConfigurationError

__all__ = ["DISCORD_API", "GatewayBot", "api_base", "fetch_gateway_bot"]

DISCORD_API = "https://discord.com/api/v10"
"""Discord's REST API, used when nothing else is configured."""


def api_base(explicit: str | None = None) -> str:
    """The REST base URL: ``explicit``, else ``$ZMQCROSS_DISCORD_REST``, ``$ZMQCROSS_DISCORD_API``, Discord's."""
    env = os.environ
    return (
        explicit or env.get("ZMQCROSS_DISCORD_REST") or env.get("ZMQCROSS_DISCORD_API") or DISCORD_API
    ).rstrip("/")


@dataclass(frozen=True, slots=True)
class GatewayBot:
    """``GET /gateway/bot``: the recommended shard count and the session start limits.

    ``reset_after`` is in seconds (Discord sends milliseconds).
    """

    shards: int
    max_concurrency: int
    total: int
    remaining: int
    reset_after: float


async def fetch_gateway_bot(token: str, *, base: str | None = None, timeout: float = 10.0) -> GatewayBot:
    """Ask Discord (``GET /gateway/bot``) for the bot's shard count and IDENTIFY limits.

    Raises :class:`ConfigurationError` with Discord's answer when it refuses the token,
    cannot be reached or answers something else than Discord's documented object.
    """
    if not token:
        raise ConfigurationError("asking Discord for /gateway/bot needs the bot token (token=...)")
    url = f"{api_base(base)}/gateway/bot"
    headers = {"Authorization": f"Bot {token.removeprefix('Bot ').strip()}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, headers=headers) as response:
                body = await response.text()
                if response.status != 200:
                    raise ConfigurationError(f"GET {url} answered {response.status}: {body[:200]}")
                data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConfigurationError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    shards = data.get("shards") if isinstance(data, dict) else None
    limit = data.get("session_start_limit") if isinstance(data, dict) else None
    if type(shards) is not int or shards < 1 or not isinstance(limit, dict):
        raise ConfigurationError(f"{url} gave no shard count and session start limit: {str(data)[:200]}")
    values = [limit.get(name) for name in ("max_concurrency", "total", "remaining", "reset_after")]
    if not all(type(v) is int and v >= 0 for v in values) or values[0] < 1:  # type: ignore[operator]
        raise ConfigurationError(f"{url} gave a malformed session_start_limit: {str(limit)[:200]}")
    concurrency, total, remaining, reset_after = values
    return GatewayBot(shards, concurrency, total, remaining, reset_after / 1000)  # type: ignore[arg-type,operator]
