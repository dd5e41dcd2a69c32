"""Which HTTP requests the dashboard answers: its own page's, not another site's.

The dashboard needs no login on loopback, so the browser on the same machine is the
door to guard. Two ways in, both closed here, before any route runs:

* **DNS rebinding.** A page on ``evil.example`` makes its own name resolve to
  127.0.0.1, and the browser then treats the dashboard as that page's origin: it may
  read ``/api/fleet`` and start guild requests. The browser still sends
  ``Host: evil.example``, so a request whose Host is not a name of this dashboard is
  refused. An IP address as Host is let through: no page can rebind an address, only
  a name it controls.
* **Cross-origin calls.** A page elsewhere calling the API sends its own ``Origin``
  (and, in current browsers, ``Sec-Fetch-Site: cross-site``). Only the dashboard's own
  origin, the Host the request came to, is answered; a link to the page from elsewhere
  (a top-level navigation) still opens it.

:class:`RequestGuard` decides from the header values alone; the app's middleware
applies it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ALL_INTERFACES", "ANY_HOST", "LOOPBACK_NAMES", "RequestGuard", "exposure", "host_name"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names the dashboard always answers to (a browser resolves localhost itself)."""

ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})
"""Bind addresses that mean every interface of the machine."""

ANY_HOST = "*"
"""In ``allowed_hosts``: answer whatever Host a request names (turns the rebinding check off)."""

_SAFE_FETCH_SITES = frozenset({"same-origin", "none"})  # none: typed in, or a bookmark


def host_name(header: str) -> str:
    """The name in a ``Host`` header or an origin's authority, lower case, without port or brackets."""
    text = header.strip().lower()
    if text.startswith("["):  # [::1]:8080
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def exposure(bound: str) -> str | None:
    """Why binding ``bound`` exposes the dashboard beyond this machine, or None for loopback."""
    if bound in ALL_INTERFACES:
        return f"listens on every interface ({bound or '0.0.0.0'})"
    name = host_name(bound)
    if name == "localhost" or (_is_address(name) and ipaddress.ip_address(name).is_loopback):
        return None
    return f"listens on {bound}, an address other machines may reach"


@dataclass(frozen=True, slots=True)
class RequestGuard:
    """Refuses requests to the dashboard bound at ``bound`` that another site could have made.

    ``allowed_hosts`` adds names the dashboard is reached by (a reverse proxy's name, the
    machine's DNS name); ``"*"`` allows every Host.
    """

    bound: str
    allowed_hosts: frozenset[str]

    @classmethod
    def for_site(cls, bound: str, allowed_hosts: Iterable[str] = ()) -> RequestGuard:
        """The guard of a dashboard bound to ``bound`` that also answers to ``allowed_hosts``."""
        return cls(bound, frozenset(host_name(h) if h != ANY_HOST else h for h in allowed_hosts))

    def host_allowed(self, host: str) -> bool:
        """Whether a request with ``Host: host`` may be answered."""
        name = host_name(host)
        return (
            ANY_HOST in self.allowed_hosts
            or name in LOOPBACK_NAMES
            or name in self.allowed_hosts
            or name == host_name(self.bound)
            or _is_address(name)
        )

    def refusal(
        self,
        *,
        host: str | None,
        origin: str | None,
        fetch_site: str | None = None,
        fetch_mode: str | None = None,
        page: bool = False,
    ) -> str | None:
        """Why the request with these headers is refused, or None to answer it.

        ``page`` is true for the HTML page, which a link from another site may open.
        Without a Host header (no browser omits it) only the Origin checks apply.
        """
        if host is not None and not self.host_allowed(host):
            names = sorted(LOOPBACK_NAMES | self.allowed_hosts | {host_name(self.bound)} - {""})
            return (
                f"Host {host!r} is not a name of this dashboard (it answers to {', '.join(names)} "
                "and IP addresses; add names with --allowed-hosts or ZMQCROSS_DASHBOARD_ALLOWED_HOSTS)"
            )
        if origin is not None:
            scheme, sep, authority = origin.strip().lower().partition("://")
            # The same site behind a TLS proxy sends https: the authority is what must match.
            same = sep and scheme in ("http", "https") and authority == (host or "").strip().lower()
            if not same or host is None:
                return f"Origin {origin!r} is not this dashboard's own: cross-origin requests are refused"
        if fetch_site is not None and fetch_site.lower() not in _SAFE_FETCH_SITES:
            if not (page and (fetch_mode or "").lower() == "navigate"):
                return f"a {fetch_site} request (Sec-Fetch-Site) is refused: only the dashboard's own page calls it"
        return None
