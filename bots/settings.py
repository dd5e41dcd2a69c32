"""Settings shared by the example processes, read from ZMQCROSS_* environment variables.

Every example reads its settings here, so a fleet is configured the same way whether it
runs from `make demo`, docker compose, or by hand on several machines.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from zmqcross import CurveClient, CurveServer


@dataclass(frozen=True)
class Settings:
    """Where the bridge is, how to authenticate, and where the CURVE keys live."""

    bridge_host: str = os.environ.get("ZMQCROSS_BRIDGE_HOST", "127.0.0.1")
    bridge_port: int = int(os.environ.get("ZMQCROSS_BRIDGE_PORT", "4444"))
    listen_host: str = os.environ.get("ZMQCROSS_LISTEN_HOST", "127.0.0.1")
    auth_token: str = os.environ.get("ZMQCROSS_AUTH_TOKEN", "change-me")
    keys: str | None = os.environ.get("ZMQCROSS_KEYS")  # folder made by `zmqcross keygen`; unset: no CURVE
    key_name: str | None = os.environ.get("ZMQCROSS_KEY_NAME")
    machine_id: str | None = os.environ.get("ZMQCROSS_MACHINE_ID")
    total_shards: int = int(os.environ.get("ZMQCROSS_TOTAL_SHARDS", "8"))
    shards_per_cluster: int = int(os.environ.get("ZMQCROSS_SHARDS_PER_CLUSTER", "2"))
    total_machines: int = int(os.environ.get("ZMQCROSS_TOTAL_MACHINES", "2"))
    spawn_delay: float = float(os.environ.get("ZMQCROSS_SPAWN_DELAY", "5"))
    rolling_restarts: bool = os.environ.get("ZMQCROSS_ROLLING_RESTARTS", "1") not in ("0", "false", "no", "")
    # A cluster silent this long (its event loop is stuck) is killed and restarted.
    cluster_heartbeat_timeout: float = float(os.environ.get("ZMQCROSS_CLUSTER_HEARTBEAT_TIMEOUT", "15"))

    def server_curve(self) -> CurveServer | None:
        """The bridge's CURVE settings: keys/bridge.key_secret and the keys/allowed folder."""
        if not self.keys:
            return None
        return CurveServer.from_files(f"{self.keys}/bridge.key_secret", allow=f"{self.keys}/allowed")

    def client_curve(self) -> CurveClient | None:
        """A client's CURVE settings: keys/allowed/<key name>.key_secret and the bridge's public key."""
        if not self.keys:
            return None
        name = self.key_name or self.machine_id
        return CurveClient.from_files(
            f"{self.keys}/allowed/{name}.key_secret", server_key=f"{self.keys}/bridge.key"
        )


def setup_logging() -> None:
    """One log format for every example process."""
    logging.basicConfig(
        level=os.environ.get("ZMQCROSS_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s"
    )
