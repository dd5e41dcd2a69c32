"""``zmqcross dashboard``: connect as a dashboard and serve the page until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from typing import Any

from ..cli.admin import admin_client
from ..cli.serve import Stopped, printer, unless_stopped
from ..client import Client
from ..errors import ConfigurationError
from .app import Dashboard

__all__ = ["build_dashboard", "run_dashboard"]


def build_dashboard(client: Client, settings: dict[str, Any]) -> Dashboard:
    """The dashboard of ``dashboard`` settings for ``client``, not started yet (bots/dashboard.py uses it too)."""
    return Dashboard(
        client,
        host=settings["dashboard_host"],
        port=settings["dashboard_port"],
        allowed_hosts=settings["dashboard_allowed_hosts"] or (),
    )


async def run_dashboard(settings: dict[str, Any], stop: asyncio.Event) -> int:
    """Run the web dashboard with the merged ``dashboard`` settings; 0 once stopped."""
    say = printer("dashboard")
    client = admin_client(settings, role="dashboard")
    dashboard = build_dashboard(client, settings)
    try:
        await unless_stopped(stop, client.connect())
        try:
            await dashboard.start()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve the dashboard on {settings['dashboard_host']} port "
                f"{settings['dashboard_port']}: {exc.strerror or exc}"
            ) from None
        say(f"serving {dashboard.url} for the bridge at {settings['bridge_host']}:{settings['bridge_port']}")
        await stop.wait()
    except Stopped:
        pass
    finally:
        await dashboard.close()
        await client.close()
    say("stopped")
    return 0
