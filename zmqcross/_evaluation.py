"""broadcast_eval scripts: shipping them from the caller, compiling and running them in a cluster.

A script is either a string or a Python function:

* A string is an expression (``len(bot.guilds)``) or statements whose last expression is
  the result (``n = len(bot.guilds)\\nn * 2``). ``await`` is allowed at the top level.
* A function (``def``, ``async def`` or ``lambda``) is called as ``fn(bot, context)``. It
  travels as its source text, so it can only use its arguments, builtins, the modules
  the clusters provide (:data:`CLUSTER_GLOBALS`) and what it imports itself. That is
  checked *at the call site*, where a mistake is cheap to read, not in every cluster.

Scripts run with ``bot`` and ``context`` in scope, never spliced into code text: the
original builds code strings around JSON, so a quote in a payload breaks it.
"""

from __future__ import annotations

import ast
import builtins
import dis
import functools
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType
from typing import Any

from .errors import ScriptError

__all__ = [
    "CLUSTER_GLOBALS",
    "CompiledScript",
    "ShippedFunction",
    "compile_script",
    "load_function",
    "ship_function",
    "start_script",
]

CLUSTER_GLOBALS = frozenset({"asyncio", "discord"})
"""Module names every cluster provides to scripts and shipped functions, besides builtins."""

_FILENAME = "<broadcast_eval>"
_RESULT = "__zmqcross_result__"
_CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class ShippedFunction:
    """A function as it travels: its source and the name it binds (None for a lambda)."""

    source: str
    name: str | None


def ship_function(fn: Callable[..., Any]) -> ShippedFunction:
    """Turn ``fn`` into source text the clusters can run, or raise :class:`ScriptError` saying why not."""
    if not inspect.isfunction(fn):
        raise ScriptError(
            f"a broadcast_eval script must be a string or a function (def, async def or lambda), "
            f"not {type(fn).__name__}"
        )
    label = f"function {fn.__qualname__!r}"
    code = fn.__code__
    if code.co_freevars:
        names = ", ".join(code.co_freevars)
        raise ScriptError(
            f"{label} uses variables from its enclosing scope ({names}); clusters cannot see them: "
            "pass their values with context= and read them from the second argument"
        )
    if code.co_argcount + code.co_kwonlyargcount < 2 and not code.co_flags & inspect.CO_VARARGS:
        raise ScriptError(f"{label} must take two arguments, (bot, context)")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise ScriptError(
            f"the source of {label} is not available (defined in a REPL?); pass a string"
        ) from None
    if fn.__name__ == "<lambda>":
        shipped = ShippedFunction(_lambda_source(fn, source, label), None)
    else:
        shipped = ShippedFunction(_def_source(fn, source, label), fn.__name__)
    unknown = sorted(_global_names(code) - _available(fn.__name__))
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise ScriptError(
            f"{label} uses global name(s) {names} that the clusters do not have; pass values with "
            f"context=, or import modules inside the function (clusters provide: "
            f"{', '.join(sorted(CLUSTER_GLOBALS))} and builtins)"
        )
    return shipped


def _available(own_name: str) -> set[str]:
    return set(dir(builtins)) | CLUSTER_GLOBALS | {own_name}


def _global_names(code: CodeType) -> set[str]:
    names: set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(str(instruction.argval))
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


def _def_source(fn: Callable[..., Any], source: str, label: str) -> str:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        raise ScriptError(f"cannot re-read the source of {label}") from None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fn.__name__:
            node.decorator_list = []  # decorators ran here; the clusters need the plain function
            return ast.unparse(node)
    raise ScriptError(f"cannot find the definition of {label} in its source")


def _lambda_source(fn: Callable[..., Any], source: str, label: str) -> str:
    # getsource gives the whole line(s) around a lambda. Each "lambda" in them starts a
    # candidate: the longest text from there that parses as an expression. Keep those whose
    # parameters match this function's, and refuse to guess between look-alikes.
    code = fn.__code__
    params = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    text = " ".join(line.strip() for line in source.splitlines())
    candidates: set[str] = set()
    position = text.find("lambda")
    while position != -1:
        for end in range(len(text), position, -1):
            try:
                node = ast.parse(text[position:end], mode="eval").body
            except SyntaxError:
                continue
            while isinstance(node, ast.Tuple) and node.elts:  # "lambda a, b: x, other_arg"
                node = node.elts[0]
            if isinstance(node, ast.Lambda):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if names == params:
                    candidates.add(ast.unparse(node))
            break
        position = text.find("lambda", position + 1)
    if len(candidates) != 1:
        raise ScriptError(
            f"cannot tell which lambda in {text!r} is {label} ({len(candidates)} candidates); use a def instead"
        )
    return candidates.pop()


# --------------------------------------------------------------------------- cluster side


@dataclass(frozen=True, slots=True)
class CompiledScript:
    """A compiled string script: its code and whether the code is a lone expression."""

    code: CodeType
    expression: bool


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_script(source: str) -> CompiledScript:
    """Compile ``source`` once (repeated evals of the same text reuse it)."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        return CompiledScript(compile(source, _FILENAME, "eval", flags=flags), True)
    except SyntaxError:
        pass
    try:
        tree = ast.parse(source, _FILENAME, "exec")
    except SyntaxError as exc:
        raise ScriptError(f"the eval script does not compile: {exc.msg} (line {exc.lineno})") from None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.Assign(targets=[ast.Name(_RESULT, ast.Store())], value=last.value)
        ast.copy_location(tree.body[-1], last)
        ast.fix_missing_locations(tree)
    return CompiledScript(compile(tree, _FILENAME, "exec", flags=flags), False)


def start_script(script: CompiledScript, namespace: dict[str, Any]) -> Any:
    """Run a compiled script in ``namespace`` (holding ``bot`` and ``context``).

    Returns the result, or an awaitable of it when the script awaits (or its result is
    awaitable): a plain script is answered without creating a task.
    """
    outcome = eval(script.code, namespace)  # noqa: S307 - running scripts is this module's purpose
    if script.expression:
        return outcome
    if inspect.isawaitable(outcome):
        return _exec_result(outcome, namespace)
    return namespace.get(_RESULT)


async def _exec_result(running: Any, namespace: dict[str, Any]) -> Any:
    await running
    result = namespace.get(_RESULT)
    return await result if inspect.isawaitable(result) else result


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compiled_function(source: str, name: str | None) -> CodeType:
    try:
        return compile(source, _FILENAME, "eval" if name is None else "exec")
    except SyntaxError as exc:
        raise ScriptError(f"the shipped function does not compile: {exc.msg}") from None


def load_function(source: str, name: str | None, namespace: dict[str, Any]) -> Callable[..., Any]:
    """Rebuild a shipped function in ``namespace`` (its globals on this side)."""
    code = _compiled_function(source, name)
    if name is None:
        return eval(code, namespace)  # type: ignore[no-any-return]  # noqa: S307
    exec(code, namespace)  # noqa: S102
    return namespace[name]  # type: ignore[no-any-return]
