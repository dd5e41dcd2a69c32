"""zmqcross.run: which loop the project's own processes get, and the errors for bad choices."""

from __future__ import annotations

import asyncio
import sys

import pytest

import zmqcross
from zmqcross import ConfigurationError
from zmqcross.eventloop import LOOP_ENV

pytestmark = pytest.mark.timeout(20)

uvloop = pytest.importorskip("uvloop")


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_auto_runs_on_uvloop_and_returns_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert zmqcross.run(loop_module()) == "uvloop"


def test_asyncio_can_be_chosen_by_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert zmqcross.run(loop_module(), loop="asyncio") == "asyncio"
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert zmqcross.run(loop_module()) == "asyncio"
    assert zmqcross.run(loop_module(), loop="uvloop") == "uvloop"  # the argument wins


def test_an_unknown_loop_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"loop='trio' is not an event loop .* auto, uvloop, asyncio"):
        zmqcross.run(loop_module(), loop="trio")
    monkeypatch.setenv(LOOP_ENV, "tokio")
    with pytest.raises(ConfigurationError, match=r"\$ZMQCROSS_LOOP='tokio'"):
        zmqcross.run(loop_module())


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert zmqcross.run(loop_module()) == "asyncio"
    with pytest.raises(ConfigurationError, match="uvloop was asked for .* not installed"):
        zmqcross.run(loop_module(), loop="uvloop")


def test_exceptions_come_out_as_they_are() -> None:
    async def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        zmqcross.run(fails())
