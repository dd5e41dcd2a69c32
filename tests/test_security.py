"""Keys, the ZAP decision, tokens and permissions, without sockets."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq.auth
from zmq.utils import z85

from zmqcross import AccessPolicy, ConfigurationError, CurveClient, CurveServer, generate_keypair
from zmqcross.security import ZapHandler, load_allow_list, load_public_key, tokens_match


def test_keygen_writes_pyzmq_compatible_files_with_a_private_secret(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path / "k", "machine-1")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    pub_key, sec_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub_key, None)
    assert len(pub_key) == 40 and sec_key is not None and len(sec_key) == 40
    with pytest.raises(ConfigurationError, match="already exists"):
        generate_keypair(tmp_path / "k", "machine-1")
    generate_keypair(tmp_path / "k", "machine-1", overwrite=True)


def test_key_loading_errors_are_clear(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path, "a")
    with pytest.raises(ConfigurationError, match="has no secret-key; pass the NAME.key_secret file"):
        CurveClient.from_files(public, server_key=public)
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        CurveClient.from_files(tmp_path / "missing.key_secret", server_key=public)
    with pytest.raises(ConfigurationError, match="neither a z85 CURVE key nor an existing key file"):
        load_public_key("~" * 40)
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(ConfigurationError, match="has no \\*.key files"):
        load_allow_list(tmp_path / "empty-dir")
    with pytest.raises(ConfigurationError, match="not a directory"):
        CurveServer.from_files(secret, allow=tmp_path / "nowhere")


def test_allow_list_from_directory_and_list(tmp_path: Path) -> None:
    pa, _ = generate_keypair(tmp_path / "allowed", "alpha")
    pb, _ = generate_keypair(tmp_path / "allowed", "beta")
    by_dir = load_allow_list(tmp_path / "allowed")
    assert sorted(by_dir.values()) == ["alpha", "beta"]
    raw = load_public_key(pb)
    by_list = load_allow_list([pa, raw.decode()])
    assert by_list[load_public_key(pa)] == "alpha" and by_list[raw] == raw.decode()[:8]


def test_zap_handler_decisions(tmp_path: Path) -> None:
    public, _ = generate_keypair(tmp_path, "ok")
    key = load_public_key(public)
    zap = ZapHandler({key: "ok"})
    binary = z85.decode(key)
    assert zap.handle([b"1.0", b"7", b"d", b"10.0.0.9", b"", b"CURVE", binary]) == [
        b"1.0",
        b"7",
        b"200",
        b"OK",
        key,
        b"",
    ]
    stranger = z85.decode(zmq.curve_keypair()[0])
    assert zap.handle([b"1.0", b"8", b"d", b"10.0.0.9", b"", b"CURVE", stranger])[2] == b"400"
    assert zap.handle([b"1.0", b"9", b"d", b"10.0.0.9", b"", b"NULL"])[2] == b"400"
    assert zap.handle([b"2.0", b"9", b"d", b"a", b"", b"CURVE", binary])[2] == b"500"
    assert zap.handle([b"1.0"])[2] == b"500"
    assert zap.denied == 2


def test_tokens_match() -> None:
    assert tokens_match("sesame", "sesame")
    assert not tokens_match("sesame", "sesam")
    assert not tokens_match("sesame", "")


def test_access_policy() -> None:
    policy = AccessPolicy(
        agents={"dashboard": ["request"]},
        keys={"ops": ["eval", "cache", "request"], "machine-*": ["host", "eval", "request"], "machine-9": []},
    )
    # Without CURVE the token is the only credential: it grants `token` (everything by default).
    assert policy.permissions(agent="bot", key=None) == {"admin", "eval", "host", "request", "cache"}
    assert policy.permissions(agent="dashboard", key=None) == {"request"}
    # An agent name only narrows: a key's holder cannot claim more by calling itself something.
    assert policy.permissions(agent="dashboard", key="ops") == {"request"}
    assert policy.permissions(agent="bot", key="ops") == {"eval", "cache", "request"}
    assert policy.permissions(agent="bot", key="machine-3") == {"host", "eval", "request"}
    assert policy.permissions(agent="bot", key="machine-9") == set()  # the exact name wins
    # A key the policy does not name gets least privilege: no eval, host or admin.
    assert policy.permissions(agent="bot", key="stranger") == {"request", "cache"}
    assert AccessPolicy(token=["request"]).permissions(agent="bot", key=None) == {"request"}
    with pytest.raises(ConfigurationError, match=r"unknown action\(s\) \['launch'\]"):
        AccessPolicy(agents={"x": ["launch"]})
    with pytest.raises(ConfigurationError, match="give a list of actions"):
        AccessPolicy(agents={"x": "eval"})
