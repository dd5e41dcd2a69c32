"""Shard planning and placement: pure decisions, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqcross import ConfigurationError, build_plan, shard_for_guild
from zmqcross.planning import Placement


def test_guild_to_shard_uses_the_snowflake_timestamp() -> None:
    guild = (150000000000 + 12345) << 22
    assert shard_for_guild(guild, 16) == (150000000000 + 12345) % 16 == 9
    assert shard_for_guild(str(guild), 16) == 9  # type: ignore[arg-type]


def test_seed_topology() -> None:
    plan = build_plan(16, shards_per_cluster=2, total_machines=4)
    assert plan.clusters == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15))
    assert plan.chunks == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert plan.cluster_of_shard(9) == 4 and plan.cluster_of_shard(99) is None
    assert plan.total_clusters == 8


def test_uneven_split_and_more_machines_than_clusters() -> None:
    assert build_plan(5, shards_per_cluster=2, total_machines=2).chunks == ((0, 1), (2,))
    assert build_plan(2, total_machines=5).chunks == ((0,), (1,))


def test_version_is_stable_and_tracks_content() -> None:
    assert build_plan(4, shards_per_cluster=2).version == build_plan(4, shards_per_cluster=2).version
    assert build_plan(4, shards_per_cluster=2).version != build_plan(4, shards_per_cluster=1).version


def test_shard_list_hosts_only_those_shards() -> None:
    plan = build_plan(8, shards_per_cluster=2, shard_list=[1, 3, 5])
    assert plan.clusters == ((1, 3), (5,))
    assert plan.total_shards == 8


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"total_shards": 0}, "total_shards must be a positive integer"),
        ({"total_shards": 4, "shards_per_cluster": 0}, "shards_per_cluster must be a positive integer"),
        ({"total_shards": 4, "total_machines": "2"}, "total_machines must be a positive integer"),
        ({"total_shards": 4, "shard_list": [0, 4]}, "shard ids run from 0 to 3"),
        ({"total_shards": 4, "shard_list": [1, 1]}, "names a shard twice"),
        ({"total_shards": 4, "shard_list": []}, "shard_list is empty"),
    ],
)
def test_bad_options(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        build_plan(**kwargs)


def test_parse_cluster_list_hook() -> None:
    def heavy_first(clusters: list[list[int]], machines: int) -> list[list[list[int]]]:
        return [clusters[:1], clusters[1:]]

    plan = build_plan(8, shards_per_cluster=2, total_machines=2, parse_cluster_list=heavy_first)
    assert plan.chunks == ((0,), (1, 2, 3))

    with pytest.raises(ConfigurationError, match="every shard of the plan exactly once"):
        build_plan(4, parse_cluster_list=lambda clusters, machines: [clusters[:1]])


def test_assignment_is_sticky_and_never_doubled() -> None:
    placement = Placement(build_plan(8, shards_per_cluster=2, total_machines=2))
    assert placement.assign("a") == (0, 1)
    assert placement.assign("a") == (0, 1)  # asking again changes nothing
    assert placement.assign("b") == (2, 3)
    assert placement.assign("c") == ()  # standby: everything is held
    placement.release("a")
    assert placement.assign("a") == (0, 1)  # a returning machine gets its chunk back


def test_failover_to_a_standby_and_the_old_owner_waits() -> None:
    placement = Placement(build_plan(4, total_machines=2))
    placement.assign("a"), placement.assign("b")
    placement.release("a")
    assert placement.assign("standby") == (0, 1)
    assert placement.holder_of(0) == "standby"
    assert placement.assign("a") == ()  # nothing free: the old owner is now a standby


def test_max_clusters_splits_instead_of_refusing() -> None:
    placement = Placement(build_plan(8, total_machines=2))
    assert placement.assign("small", max_clusters=1) == (0,)
    assert placement.assign("rest") == (1, 2, 3)
    assert placement.assign("other") == (4, 5, 6, 7)
    with pytest.raises(ConfigurationError, match="max_clusters"):
        placement.assign("bad", max_clusters=0)


def test_claims_rebuild_the_map_after_a_bridge_restart() -> None:
    placement = Placement(build_plan(8, shards_per_cluster=2, total_machines=2))
    assert placement.claim("b", [2, 3]) is None
    assert placement.assign("new") == (0, 1)  # the claimed chunk is not handed out again
    assert placement.claim("x", [1]) == "cluster 1 is held by machine 'new'"
    assert placement.claim("x", [9]) == "cluster 9 is not in the plan"
    assert placement.assign("late") == ()


def test_partial_reclaim_frees_the_rest() -> None:
    placement = Placement(build_plan(4, total_machines=1))
    assert placement.assign("a") == (0, 1, 2, 3)
    assert placement.claim("a", [0, 1]) is None
    assert placement.assign("b") == (2, 3)


operations = st.lists(
    st.tuples(
        st.sampled_from(["assign", "claim", "release"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.lists(st.integers(0, 7), max_size=4),
        st.integers(1, 3),
    ),
    max_size=30,
)


@given(operations)
def test_every_cluster_has_at_most_one_holder_whatever_happens(ops: list[tuple[str, str, list[int], int]]) -> None:
    placement = Placement(build_plan(16, shards_per_cluster=2, total_machines=3))
    for op, machine, clusters, most in ops:
        if op == "assign":
            placement.assign(machine, max_clusters=most)
        elif op == "claim":
            placement.claim(machine, clusters)
        else:
            placement.release(machine)
        held = {m: placement.held_by(m) for m in "abcd"}
        owners = [(c, m) for m, chunk in held.items() for c in chunk]
        assert len(owners) == len({c for c, _ in owners})  # never held twice
        for cid in range(8):
            assert placement.holder_of(cid) == next((m for c, m in owners if c == cid), None)


def test_shard_data_record() -> None:
    placement = Placement(build_plan(4, shards_per_cluster=2, total_machines=2))
    data = placement.shard_data(placement.assign("a"))
    assert data.shard_list == ((0, 1),) and data.cluster_list == (0,) and not data.standby
    assert type(data).from_json(data.to_json()) == data
    assert placement.shard_data(()).standby


class _HugeShardList:
    """A shard list that claims millions of ids and fails the test if anything reads them."""

    def __len__(self) -> int:
        return 3_000_000

    def __getitem__(self, index: object) -> int:
        raise AssertionError("build_plan read a shard list it should have refused by its length")

    def __iter__(self) -> object:
        raise AssertionError("build_plan iterated a shard list it should have refused by its length")


def test_plans_beyond_the_shard_limit_are_refused_before_any_work() -> None:
    # reshard(total_shards=3_000_000) used to hold the bridge's loop 3 s and add 524 MB.
    import time

    from zmqcross import planning

    limit = planning.MAX_TOTAL_SHARDS
    started = time.perf_counter()
    with pytest.raises(ConfigurationError, match=f"total_shards 3000000 is over the limit of {limit}"):
        build_plan(3_000_000)
    with pytest.raises(ConfigurationError, match=f"at most {limit}"):
        build_plan(10**18)
    with pytest.raises(ConfigurationError, match=f"shard_list has 3000000 ids; at most {limit}"):
        build_plan(limit, shard_list=_HugeShardList())  # type: ignore[arg-type]
    assert time.perf_counter() - started < 0.1
    assert build_plan(limit, shards_per_cluster=1000, total_machines=4).total_shards == limit
