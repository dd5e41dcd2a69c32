"""CURVE keys, the ZAP decision, auth tokens and per-peer permissions. No sockets.

CURVE stands in for TLS: the bridge is the CURVE server and admits only client keys in
its allow-list. libzmq asks a ZAP handler about every handshake; *without one in the
same context it admits any key*, so the bridge binds :class:`ZapHandler`'s socket on
its own context before it binds anything else. The handler names each admitted key
(``User-Id``), and the bridge pins a client's registration to that name so one machine
cannot pose as another by claiming its routing id.

Key files use the format of ``zmq.auth.create_certificates``: ``NAME.key`` (public)
and ``NAME.key_secret`` (public + secret, written 0600 here).
"""

from __future__ import annotations

import fnmatch
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import ConfigurationError

__all__ = [
    "ACTIONS",
    "KEY_FOLDER_MODE",
    "LEAST_PRIVILEGE",
    "AccessPolicy",
    "CurveClient",
    "CurveServer",
    "ZapHandler",
    "generate_keypair",
    "load_allow_list",
    "load_keypair",
    "load_public_key",
    "tokens_match",
]

log = logging.getLogger("zmqcross.security")

ACTIONS = frozenset({"admin", "cache", "eval", "host", "request"})
"""What a peer may be allowed to do: send requests and messages (``request``), use the
cache (``cache``), run code on every cluster (``eval``), run clusters and so receive their
evals and guild requests (``host``), and administer the fleet (``admin``: reshard)."""

LEAST_PRIVILEGE = frozenset({"cache", "request"})
"""What an allow-listed CURVE key that the policy does not name may do."""

ZAP_DOMAIN = "zmqcross"


def tokens_match(expected: str, given: str) -> bool:
    """Compare auth tokens in constant time (no timing hint about how much matched)."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


# --------------------------------------------------------------------------- permissions


def _actions(where: str, actions: Iterable[str]) -> frozenset[str]:
    if isinstance(actions, str):
        raise ConfigurationError(f"{where}: give a list of actions, not the string {actions!r}")
    chosen = frozenset(actions)
    unknown = chosen - ACTIONS
    if unknown:
        raise ConfigurationError(f"{where}: unknown action(s) {sorted(unknown)}; known: {sorted(ACTIONS)}")
    return chosen


@dataclass(frozen=True)
class AccessPolicy:
    """What each peer may do, bound to what a peer cannot forge.

    With CURVE, rights follow the peer's key (its name in the allow-list): ``keys`` maps
    key names, or ``fnmatch`` patterns such as ``"machine-*"``, to actions (an exact name
    wins over a pattern, then the first matching pattern); a key the policy does not
    name gets ``default``, least privilege: ``request`` and ``cache``. Without CURVE
    there is no identity but the auth token, and every peer holding it gets ``token``
    (every action unless narrowed). ``agents`` can only narrow: a peer whose
    self-declared agent name is listed gets the intersection, never more.

    ``AccessPolicy(keys={"machine-*": ["host", "eval", "request", "cache"], "ops": ACTIONS})``
    lets machine keys run clusters and evals and the ops key administer; a dashboard's
    key, not named, may ask and use the cache.
    """

    agents: Mapping[str, Iterable[str]] = field(default_factory=dict)
    keys: Mapping[str, Iterable[str]] = field(default_factory=dict)
    default: Iterable[str] = LEAST_PRIVILEGE
    token: Iterable[str] = ACTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "agents", {a: _actions(f"agent {a!r}", v) for a, v in self.agents.items()})
        object.__setattr__(self, "keys", {k: _actions(f"key {k!r}", v) for k, v in self.keys.items()})
        object.__setattr__(self, "default", _actions("default", self.default))
        object.__setattr__(self, "token", _actions("token", self.token))

    def permissions(self, *, agent: str, key: str | None) -> frozenset[str]:
        """The actions of a peer with this agent name and key name (``key=None``: no CURVE, the token's)."""
        rights = frozenset(self.token) if key is None else self.for_key(key)
        narrowed = self.agents.get(agent)
        return rights & frozenset(narrowed) if narrowed is not None else rights

    def for_key(self, key: str) -> frozenset[str]:
        """The actions of the CURVE key named ``key``, before any agent narrows them."""
        keys: Mapping[str, frozenset[str]] = self.keys  # type: ignore[assignment]  # normalised in __post_init__
        if key in keys:
            return keys[key]
        for pattern, actions in keys.items():
            if fnmatch.fnmatchcase(key, pattern):
                return actions
        return frozenset(self.default)


# --------------------------------------------------------------------------- keys


def generate_keypair(
    directory: str | os.PathLike[str], name: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``directory``.

    Folders it creates are made 0755 whatever the umask (:data:`KEY_FOLDER_MODE`); an
    existing folder that others may write to is logged as a warning.

    Returns both paths. Refuses to overwrite existing files unless ``overwrite``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigurationError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    _make_folder(folder)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not overwrite:
        for path in (public_path, secret_path):
            if path.exists():
                raise ConfigurationError(
                    f"{path} already exists; pass overwrite=True (or --force) to replace it"
                )
    public, secret = zmq.curve_keypair()
    _write_key(public_path, public, None, 0o644)
    _write_key(secret_path, public, secret, 0o600)
    return public_path, secret_path


KEY_FOLDER_MODE = 0o755
"""Mode of each folder :func:`generate_keypair` creates: whoever may write to an allow-list
folder may add a key the bridge then admits, so it is set explicitly, whatever the umask."""


def _make_folder(folder: Path) -> None:
    # Path.mkdir(mode=...) is filtered by the umask and parents=True ignores mode altogether:
    # under umask 000 every folder came out 0777. Each missing folder is made and chmod-ed.
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # made meanwhile by someone else: not ours to change
            continue
        os.chmod(path, KEY_FOLDER_MODE)
    if os.stat(folder).st_mode & 0o022:
        log.warning(
            "key folder %s is writable by others (mode %o): anyone who can write there can add or "
            "replace keys; chmod go-w it",
            folder,
            os.stat(folder).st_mode & 0o777,
        )


def _write_key(path: Path, public: bytes, secret: bytes | None, mode: int) -> None:
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate, written by zmqcross",
        "#   Keep secret certificates private (mode 0600)." if secret is not None else "",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    # Created with its final mode: a secret is never readable by others, even briefly.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, ("\n".join(lines) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a CURVE key file: {exc}") from None
    if public is None or len(public) != 40:
        raise ConfigurationError(f"{path} has no valid public-key")
    return public, secret


def load_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a ``.key_secret`` file."""
    public, secret = _read_certificate(Path(path))
    if secret is None or len(secret) != 40:
        raise ConfigurationError(f"{path} has no secret-key; pass the NAME.key_secret file, not NAME.key")
    return public, secret


def load_public_key(source: str | bytes | os.PathLike[str]) -> bytes:
    """A z85 public key: given as 40 z85 characters, or as a key file's path."""
    if isinstance(source, bytes) and len(source) == 40:
        return source
    if isinstance(source, str) and len(source) == 40 and not os.path.exists(source):
        _check_z85(source)
        return source.encode("ascii")
    return _read_certificate(Path(os.fsdecode(source)))[0]


def _check_z85(text: str) -> None:
    try:
        z85.decode(text)
    except (ValueError, KeyError, IndexError):
        raise ConfigurationError(f"{text!r} is neither a z85 CURVE key nor an existing key file") from None


def load_allow_list(
    source: str | os.PathLike[str] | Iterable[str | bytes | os.PathLike[str]],
) -> dict[bytes, str]:
    """Allowed client keys, ``{z85 public key: name}``.

    ``source`` is a directory of ``*.key`` files (each named by its file stem), or a list of
    key files and z85 keys (a bare key is named by its first 8 characters).
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ConfigurationError(f"allow-list {folder} is not a directory of *.key files")
        files = sorted(folder.glob("*.key"))
        if not files:
            raise ConfigurationError(
                f"allow-list directory {folder} has no *.key files: no client could connect"
            )
        return {_read_certificate(p)[0]: p.stem for p in files}
    allowed: dict[bytes, str] = {}
    for item in source:
        if isinstance(item, (str, bytes)) and len(item) == 40 and not os.path.exists(os.fsdecode(item)):
            key = load_public_key(item)
            allowed[key] = key.decode("ascii")[:8]
        else:
            path = Path(os.fsdecode(item))
            allowed[_read_certificate(path)[0]] = path.stem
    if not allowed:
        raise ConfigurationError("the CURVE allow-list is empty: no client could connect")
    return allowed


@dataclass(frozen=True)
class CurveServer:
    """The bridge's CURVE settings: its key pair and the client keys it admits.

    When the allow-list is a directory (``allow_dir``), a key file dropped into it is
    admitted without restarting the bridge: an unknown key makes the bridge re-read the
    directory (at most once a second) before refusing it.
    """

    public_key: bytes
    secret_key: bytes
    allowed: Mapping[bytes, str]
    allow_dir: Path | None = None
    _loaded_mtime: list[int] = field(default_factory=lambda: [-1], repr=False, compare=False)

    def reload(self) -> Mapping[bytes, str]:
        """The allow-list as it is on disk now (the loaded one when it came from a list).

        The directory is re-read only when its modification time changed, so a stream of
        unknown keys costs one ``stat`` each.
        """
        if self.allow_dir is None:
            return self.allowed
        try:
            mtime = self.allow_dir.stat().st_mtime_ns
            if mtime == self._loaded_mtime[0]:
                return self.allowed
            fresh = load_allow_list(self.allow_dir)
        except (OSError, ConfigurationError) as exc:
            log.warning("keeping the previous CURVE allow-list: %s", exc)
            return self.allowed
        self._loaded_mtime[0] = mtime
        object.__setattr__(self, "allowed", fresh)
        log.info("CURVE allow-list re-read from %s: %d keys", self.allow_dir, len(fresh))
        return fresh

    @classmethod
    def from_files(
        cls,
        secret_file: str | os.PathLike[str],
        *,
        allow: str | os.PathLike[str] | Iterable[str | bytes | os.PathLike[str]],
    ) -> CurveServer:
        """Load the bridge's ``.key_secret`` file and the allow-list (see :func:`load_allow_list`)."""
        public, secret = load_keypair(secret_file)
        folder = Path(allow) if isinstance(allow, (str, os.PathLike)) else None
        return cls(public, secret, load_allow_list(allow), folder)


@dataclass(frozen=True)
class CurveClient:
    """A client's CURVE settings: its key pair and the bridge's public key."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    @classmethod
    def from_files(
        cls, secret_file: str | os.PathLike[str], *, server_key: str | bytes | os.PathLike[str]
    ) -> CurveClient:
        """Load this client's ``.key_secret`` file and the bridge's public key (file or z85)."""
        public, secret = load_keypair(secret_file)
        return cls(public, secret, load_public_key(server_key))


# --------------------------------------------------------------------------- ZAP


class ZapHandler:
    """Decides ZAP requests (RFC 27) against a CURVE allow-list.

    :meth:`handle` maps one request's frames to the reply frames; the bridge's loop
    owns the ``inproc://zeromq.zap.01`` socket and only moves bytes.
    """

    def __init__(
        self, allowed: Mapping[bytes, str], *, reload: Callable[[], Mapping[bytes, str]] | None = None
    ) -> None:
        self._allowed = {z85.decode(k) for k in allowed}
        self._reload = reload
        self.denied = 0

    def _known(self, key: bytes) -> bool:
        if key not in self._allowed and self._reload is not None:
            self._allowed = {z85.decode(k) for k in self._reload()}
        return key in self._allowed

    def refresh(self) -> None:
        """Take the allow-list as it is now: removed keys are refused from the next handshake."""
        if self._reload is not None:
            self._allowed = {z85.decode(k) for k in self._reload()}

    def handle(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: 200 with the z85 key as User-Id, or 400."""
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        if version != b"1.0":
            return [b"1.0", request_id, b"500", b"unsupported ZAP version", b"", b""]
        peer = address.decode("utf-8", "replace")
        if mechanism != b"CURVE" or len(credentials) != 1:
            self.denied += 1
            log.warning(
                "refused a %s handshake from %s: this bridge requires CURVE", mechanism.decode(), peer
            )
            return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        key = z85.encode(credentials[0])
        if not self._known(credentials[0]):
            self.denied += 1
            log.warning("refused CURVE key %s from %s: not in the allow-list", key.decode("ascii"), peer)
            return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]
        # User-Id is the z85 key itself: unique even when two allow-list files share a name.
        return [b"1.0", request_id, b"200", b"OK", key, b""]
