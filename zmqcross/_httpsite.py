"""One aiohttp app served on one host and port: the metrics endpoint and the dashboard.

Both bind on the caller's event loop, accept port 0 (a free port, readable afterwards)
and must leave nothing bound when the port is taken.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["HttpSite"]


class HttpSite:
    """Serves an :class:`aiohttp.web.Application` on ``host:port`` until :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port (the real one once started, also when 0 was asked for)."""
        return self._port

    @property
    def started(self) -> bool:
        """Whether it is serving."""
        return self._runner is not None

    def url(self, path: str = "/") -> str:
        """``http://host:port`` + ``path``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}{path}"

    async def start(self, app: web.Application) -> None:
        """Serve ``app``; ``OSError`` (nothing left bound) if the port cannot be had."""
        if self._runner is not None:
            raise RuntimeError("this site is already serving")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
