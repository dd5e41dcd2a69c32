"""The link's and a cluster's state tables: every allowed move works, any other raises.

Pure and fast: no sockets, no processes, no event loop (a client that never connected
opens nothing).
"""

from __future__ import annotations

import logging
from collections import deque
from enum import Enum
from pathlib import Path
from typing import TypeVar

import pytest

from zmqcross import Client, ClusterManager
from zmqcross._events import EventEmitter
from zmqcross._requests import OpenRequests
from zmqcross._transitions import IllegalTransition, Transitions
from zmqcross.client import LINK_TRANSITIONS, LinkState
from zmqcross.client._channel import Channel
from zmqcross.client._link import Link
from zmqcross.cluster.manager import CLUSTER_TRANSITIONS, ClusterState, _Cluster
from zmqcross.protocol import DEFAULT_LIMITS

pytestmark = pytest.mark.timeout(10)

HERE = Path(__file__).parent

S = TypeVar("S", bound=Enum)


def path_to(table: Transitions[S], start: S, goal: S) -> list[S]:
    """The shortest list of moves from ``start`` that ends in ``goal`` (empty if already there)."""
    previous: dict[S, S | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for nxt in table.allowed(state):
            if nxt not in previous:
                previous[nxt] = state
                queue.append(nxt)
    assert goal in previous, f"{goal} cannot be reached from {start}"
    steps: list[S] = []
    at: S | None = goal
    while at is not None and at != start:
        steps.append(at)
        at = previous[at]
    return steps[::-1]


def new_link() -> Link:
    channel = Channel(
        host="127.0.0.1", port=1, pub_port=2, machine_id="m1", curve=None, limits=DEFAULT_LIMITS
    )
    return Link(
        channel,
        open_requests=OpenRequests(),
        events=EventEmitter(("ready", "disconnect", "error"), logging.getLogger("test")),
        limits=DEFAULT_LIMITS,
        auth_token="token",
        machine_id="m1",
        agent="bot",
        curve=False,
        retry_interval=0.5,
        max_retry_interval=5.0,
    )


# ---------------------------------------------------------------------- the link


def test_link_states_keep_their_strings() -> None:
    # These are what ClientStatistics.state, status and error messages show.
    assert [s.value for s in LinkState] == ["idle", "registering", "ready", "lost", "closed"]


def test_link_table_lists_every_state_and_only_closed_is_final() -> None:
    for state in LinkState:
        assert LINK_TRANSITIONS.allowed(state) or state is LinkState.CLOSED, state
    assert LINK_TRANSITIONS.allowed(LinkState.CLOSED) == frozenset()
    assert len(LINK_TRANSITIONS.moves()) == 9


@pytest.mark.parametrize(
    ("old", "new"), LINK_TRANSITIONS.moves(), ids=lambda s: s.value if isinstance(s, Enum) else str(s)
)
def test_every_allowed_link_move_works(old: LinkState, new: LinkState) -> None:
    link = new_link()
    assert link.state is LinkState.IDLE
    for step in path_to(LINK_TRANSITIONS, LinkState.IDLE, old):
        link.move(step)
    assert link.state is old
    link.move(new)
    assert link.state is new
    assert link.connected is (new is LinkState.READY)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (LinkState.IDLE, LinkState.READY),  # ready only after a registration was sent and welcomed
        (LinkState.REGISTERING, LinkState.LOST),  # lost is only ever noticed while ready
        (LinkState.LOST, LinkState.REGISTERING),
        (LinkState.READY, LinkState.IDLE),
        (LinkState.CLOSED, LinkState.REGISTERING),  # closed is final: a new Client connects again
        (LinkState.CLOSED, LinkState.CLOSED),
    ],
)
def test_illegal_link_moves_raise_naming_both_states(old: LinkState, new: LinkState) -> None:
    link = new_link()
    for step in path_to(LINK_TRANSITIONS, LinkState.IDLE, old):
        link.move(step)
    with pytest.raises(
        IllegalTransition, match=f"the link to the bridge cannot go from '{old.value}' to '{new.value}'"
    ):
        link.move(new)
    assert link.state is old  # an illegal move changes nothing


def test_illegal_move_message_lists_what_is_allowed() -> None:
    link = new_link()
    with pytest.raises(IllegalTransition) as caught:
        link.move(LinkState.LOST)
    assert str(caught.value) == (
        "the link to the bridge cannot go from 'idle' to 'lost' (from 'idle' it may go to: closed, registering)"
    )
    assert isinstance(caught.value, RuntimeError)


async def test_client_state_is_public_and_statistics_show_its_value() -> None:
    client = Client(auth_token="token", machine_id="m1")
    assert client.state is LinkState.IDLE and not client.connected
    assert client.statistics().state == "idle"
    await client.close()  # never connected: nothing to leave, the link is simply closed
    assert client.state is LinkState.CLOSED and client.statistics().state == "closed"
    await client.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="this client is closed; create a new Client to connect again"):
        await client.connect()


# ---------------------------------------------------------------------- a cluster's states


def test_cluster_states_keep_their_strings() -> None:
    assert [s.value for s in ClusterState] == ["starting", "ready", "stopping", "stopped", "failed"]
    for state in ClusterState:
        assert CLUSTER_TRANSITIONS.allowed(state), f"{state} has no way out"


@pytest.mark.parametrize(
    ("old", "new"), CLUSTER_TRANSITIONS.moves(), ids=lambda s: s.value if isinstance(s, Enum) else str(s)
)
def test_every_allowed_cluster_move_works(old: ClusterState, new: ClusterState) -> None:
    cluster = _Cluster(0, (0, 1))
    assert cluster.state is ClusterState.STOPPED
    for step in path_to(CLUSTER_TRANSITIONS, ClusterState.STOPPED, old):
        cluster.move(step)
    cluster.move(new)
    assert cluster.state is new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ClusterState.STOPPED, ClusterState.READY),  # ready only after its process started
        (ClusterState.STOPPING, ClusterState.READY),
        (ClusterState.STOPPING, ClusterState.STARTING),
        (ClusterState.FAILED, ClusterState.STARTING),  # a failed cluster is not restarted
        (ClusterState.READY, ClusterState.STARTING),
        (ClusterState.READY, ClusterState.FAILED),  # failed is decided once the process is gone
    ],
)
def test_illegal_cluster_moves_raise_naming_both_states(old: ClusterState, new: ClusterState) -> None:
    cluster = _Cluster(3, (6, 7))
    for step in path_to(CLUSTER_TRANSITIONS, ClusterState.STOPPED, old):
        cluster.move(step)
    with pytest.raises(IllegalTransition, match=f"a cluster cannot go from '{old.value}' to '{new.value}'"):
        cluster.move(new)
    assert cluster.state is old


def test_a_manager_reports_its_clusters_states_as_strings() -> None:
    manager = ClusterManager(HERE / "fleet_bot.py", total_shards=4, shard_list=[[0, 1], [2, 3]])
    assert [(c.id, c.state) for c in manager.clusters] == [(0, "stopped"), (1, "stopped")]
