"""The zmqcross command, run as a real process."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import zmq.auth


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqcross", *args], capture_output=True, text=True, timeout=30
    )


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0 and "keygen" in result.stdout
    result = run("keygen", "--help")
    assert result.returncode == 0 and "0600" in result.stdout


def test_keygen_writes_a_usable_pair(tmp_path: Path) -> None:
    result = run("keygen", str(tmp_path / "keys"), "machine-1")
    assert result.returncode == 0, result.stderr
    secret = tmp_path / "keys" / "machine-1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    public, private = zmq.auth.load_certificate(secret)
    assert private is not None and zmq.auth.load_certificate(tmp_path / "keys" / "machine-1.key")[0] == public
    again = run("keygen", str(tmp_path / "keys"), "machine-1")
    assert again.returncode == 2 and "already exists; pass overwrite=True (or --force)" in again.stderr
    assert run("keygen", "--force", str(tmp_path / "keys"), "machine-1").returncode == 0


def test_unknown_command_fails_with_usage() -> None:
    result = run("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr
