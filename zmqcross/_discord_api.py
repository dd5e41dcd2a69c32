"""The few Discord REST calls zmqcross makes itself, and where they go.

``ZMQCROSS_DISCORD_API`` (or an explicit ``api_base``) points them at another server,
such as the offline gateway; without either they go to Discord.
"""

from __future__ import annotations

import os

import aiohttp

from .errors import ConfigurationError

__all__ = ["DISCORD_API", "api_base", "fetch_recommended_shards"]

DISCORD_API = "https://discord.com/api/v10"
"""Discord's REST API, used when nothing else is configured."""


def api_base(explicit: str | None = None) -> str:
    """The REST base URL: ``explicit``, else ``$ZMQCROSS_DISCORD_API``, else Discord's."""
    return (explicit or os.environ.get("ZMQCROSS_DISCORD_API") or DISCORD_API).rstrip("/")


async def fetch_recommended_shards(token: str, *, base: str | None = None, timeout: float = 10.0) -> int:
    """Discord's recommended shard count for the bot (``GET /gateway/bot``).

    Raises :class:`ConfigurationError` with Discord's answer when it refuses the token or
    cannot be reached: ``total_shards="auto"`` cannot work without it.
    """
    if not token:
        raise ConfigurationError('total_shards="auto" needs the bot token (token=...) to ask Discord')
    url = f"{api_base(base)}/gateway/bot"
    headers = {"Authorization": f"Bot {token.removeprefix('Bot ').strip()}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, headers=headers) as response:
                body = await response.text()
                if response.status != 200:
                    raise ConfigurationError(
                        f'total_shards="auto": GET {url} answered {response.status}: {body[:200]}'
                    )
                data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConfigurationError(
            f'total_shards="auto": cannot reach {url}: {exc or type(exc).__name__}'
        ) from None
    shards = data.get("shards") if isinstance(data, dict) else None
    if type(shards) is not int or shards < 1:
        raise ConfigurationError(f'total_shards="auto": {url} gave no shard count: {str(data)[:200]}')
    return shards
