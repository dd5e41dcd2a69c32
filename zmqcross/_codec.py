"""Frozen dataclasses <-> JSON objects, checked field by field. Pure; used by :mod:`protocol`.

Each :class:`Codec` is built once from a dataclass's type hints. It has two decoders:

* a *fast* one, generated as Python source when the codec is built, with every field's
  type check inlined (no function call per field). Every message the fabric carries goes
  through it, three or four times per eval, so it is worth the generated code;
* a *careful* one that walks the same checks through small functions and says exactly
  which field is wrong. It runs only when the fast one refuses a header, so malformed
  input still gets a precise :class:`ProtocolError` while good input pays the least.

The fast checks are also generated without the building, as ``fast_check``, for the
hops that read an eval's header as it is (:mod:`zmqcross._relaying`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from .errors import ProtocolError

__all__ = ["Codec"]

_Check = Callable[[Any], Any]


class _Bad(Exception):
    """A field value of the wrong shape; turned into a ProtocolError with context."""


def _check_int(value: Any) -> int:
    if type(value) is not int:
        raise _Bad("an integer")
    return value


def _check_float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _Bad("a number")


def _check_str(value: Any) -> str:
    if type(value) is not str:
        raise _Bad("a string")
    return value


def _check_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Bad("true or false")
    return value


def _check_any(value: Any) -> Any:
    return value


_SIMPLE: dict[Any, _Check] = {int: _check_int, float: _check_float, str: _check_str, bool: _check_bool}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(hint):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner
    return hint


class Codec:
    """Encoder and decoders for one frozen dataclass.

    Fields typed ``bytes`` are body frames, ``tuple[bytes, ...]`` takes the remaining
    frames; a ``Literal`` field named ``type`` is the message kind; everything else is a
    header field. ``structs`` maps nested dataclass types to their codecs.
    """

    def __init__(self, cls: type, structs: Mapping[type, Codec]) -> None:
        self.cls = cls
        self._structs = structs
        hints = typing.get_type_hints(cls)
        self.kind: str | None = None
        self.header: list[tuple[str, Any, bool]] = []  # name, hint without Optional, required
        self.body: list[str] = []
        self.rest: str | None = None
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if f.name == "type" and typing.get_origin(hint) is Literal:
                self.kind = typing.get_args(hint)[0]
                continue
            if hint is bytes:
                self.body.append(f.name)
            elif hint == tuple[bytes, ...]:
                self.rest = f.name
            else:
                required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                self.header.append((f.name, _unwrap_optional(hint), required))
        self.header_names = frozenset(name for name, _, _ in self.header)
        self._checks = [(name, self._checker(hint), required) for name, hint, required in self.header]
        self.fast_decode: Callable[[Any, Sequence[bytes]], Any] = self._compile_decoder()
        """``fast_decode(header, body)``: the message, or None if anything is off (then the
        careful :meth:`from_json` says what)."""
        self.fast_check: Callable[[Any], bool | None] = self._compile_decoder(build=False)
        """``fast_check(header)``: True if ``fast_decode`` would accept the header's fields."""
        self.to_json: Callable[[Any], dict[str, Any]] = self._compile_encoder()

    # ------------------------------------------------------------------ careful path

    def from_json(self, obj: Any, where: str) -> dict[str, Any]:
        """Checked field values of ``obj``, or a :class:`ProtocolError` naming the bad field."""
        if type(obj) is not dict:
            raise ProtocolError(f"{where} must be a JSON object")
        values: dict[str, Any] = {}
        for name, check, required in self._checks:
            value = obj.get(name)
            if value is None:
                if required:
                    raise ProtocolError(f"{where} is missing the field {name!r}")
                continue  # the dataclass default applies
            try:
                values[name] = check(value)
            except _Bad as bad:
                raise ProtocolError(f"{where}: field {name!r} must be {bad}, not {_show(value)}") from None
            except ProtocolError as inner:
                raise ProtocolError(f"{where}: field {name!r}: {inner.message}") from None
        return values

    def _checker(self, hint: Any) -> _Check:
        if hint is Any:
            return _check_any
        if hint in _SIMPLE:
            return _SIMPLE[hint]
        if hint in self._structs:
            codec = self._structs[hint]

            def check_struct(value: Any) -> Any:
                if type(value) is not dict:
                    raise _Bad(f"a {codec.cls.__name__} object")
                return codec.cls(**codec.from_json(value, codec.cls.__name__))

            return check_struct
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = self._checker(args[0])
            what = getattr(args[0], "__name__", "values")

            def check_tuple(value: Any) -> tuple[Any, ...]:
                if type(value) is not list:
                    raise _Bad(f"a list of {what}")
                return tuple(item(x) for x in value)

            return check_tuple
        raise TypeError(f"protocol field type {hint!r} has no checker")  # a bug in the message definitions

    # ------------------------------------------------------------------ fast paths (generated)

    def _compile_decoder(self, *, build: bool = True) -> Callable[..., Any]:
        # One function per kind: checks every header field inline, then calls the class
        # with keywords (no values dict, no ``**``): a third less time per decode than
        # checking into a dict and building from it. ``build=False`` makes the same
        # checks and returns True, for readers that use the header as it is.
        lines = ["def fast(h, body=()):", "    if type(h) is not dict: return None"]
        env: dict[str, Any] = {"_bytes": bytes, "_map": map, "_tuple": tuple, "C": self.cls}
        args: list[str] = []
        for index, (name, hint, required) in enumerate(self.header):
            var = f"v{index}"
            lines.append(f"    {var} = h.get({name!r})")
            checks = self._check_lines(hint, var, env, f"f{index}")
            if required:
                lines.append(f"    if {var} is None: return None")
                lines += ["    " + line for line in checks]
            elif build:
                lines.append(f"    if {var} is None:")
                lines.append(f"        {var} = {self._default_expr(name, env, index)}")
                if checks:
                    lines.append("    else:")
                    lines += ["        " + line for line in checks]
            elif checks:
                lines.append(f"    if {var} is not None:")
                lines += ["        " + line for line in checks]
            args.append(f"{name}={var}")
        for index, name in enumerate(self.body):
            args.append(f"{name}=_bytes(body[{index}])")
        if self.rest is not None:
            args.append(f"{self.rest}=_tuple(_map(_bytes, body[{len(self.body)}:]))")
        lines.append(f"    return C({', '.join(args)})" if build else "    return True")
        exec("\n".join(lines), env)  # noqa: S102 - source built above from the dataclass's own hints
        return env["fast"]  # type: ignore[no-any-return]

    def _default_expr(self, name: str, env: dict[str, Any], index: int) -> str:
        """Source for an absent optional field's value: its dataclass default."""
        field = {f.name: f for f in dataclasses.fields(self.cls)}[name]
        if field.default_factory is not dataclasses.MISSING:
            env[f"F{index}"] = field.default_factory
            return f"F{index}()"
        if field.default is None:
            return "None"
        env[f"D{index}"] = field.default
        return f"D{index}"

    def _check_lines(self, hint: Any, var: str, env: dict[str, Any], tag: str) -> list[str]:
        """Statements that check (and convert) ``var`` in place, or ``return None`` to refuse."""
        if hint is Any:
            return []
        if hint is float:
            return [
                f"if type({var}) is not float:",
                f"    if type({var}) is not int: return None",
                f"    {var} = float({var})",
            ]
        if hint in (int, str, bool):
            return [f"if type({var}) is not {hint.__name__}: return None"]
        if hint in self._structs:
            codec = self._structs[hint]
            env[f"S_{tag}"] = codec.fast_decode
            return [f"{var} = S_{tag}({var}, ())", f"if {var} is None: return None"]
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = f"{var}_i"
            inner = self._check_lines(args[0], item, env, tag + "i")
            lines = [f"if type({var}) is not list: return None"]
            if not inner:
                return [*lines, f"{var} = tuple({var})"]
            lines += [f"{var}_t = []", f"for {item} in {var}:"]
            lines += ["    " + line for line in inner]
            lines += [f"    {var}_t.append({item})", f"{var} = tuple({var}_t)"]
            return lines
        raise TypeError(f"protocol field type {hint!r} has no fast check")

    def _compile_encoder(self) -> Callable[[Any], dict[str, Any]]:
        # Nested dataclasses are left to orjson, which encodes dataclasses natively.
        lines = ["def to_json(m):", "    out = {}"]
        for name, _, _ in self.header:
            lines += [f"    v = m.{name}", "    if v is not None:", f"        out[{name!r}] = v"]
        lines.append("    return out")
        env: dict[str, Any] = {}
        exec("\n".join(lines), env)  # noqa: S102 - source built above from the dataclass's own fields
        return env["to_json"]  # type: ignore[no-any-return]
