"""The embedded cluster: three routed nats-servers that hold a replicas-3 stream."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from nats.js.api import StreamInfo

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedCluster
from workledger.core.publisher import Publisher


async def _ensured(config: LogConfig) -> StreamInfo:
    """The stream ``ensure_stream`` leaves, as ``stream_info`` reads it."""
    nc = await connect(config)
    try:
        await ensure_stream(nc.jetstream(), config)
        return await stream_info(nc.jetstream(), config)
    finally:
        await nc.close()


@pytest.mark.anyio
async def test_a_three_node_cluster_holds_a_replicated_stream_that_survives_a_node(
    tmp_path: Path,
) -> None:
    """Created with replicas 3 it has three peers; with a follower down it still stores events."""
    with EmbeddedCluster(tmp_path) as cluster:
        config = LogConfig(servers=cluster.urls, stream="R3", replicas=3, reconnect_wait=0.1)
        info = await _ensured(config)
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2, "a leader and two followers"
        leader = next(
            n for n in cluster.nodes if n.cluster and n.cluster.server_name == info.cluster.leader
        )
        follower = next(n for n in cluster.nodes if n is not leader)
        follower.stop()
        async with Publisher(config) as pub:
            seq = await pub.publish_and_wait(ev.WorkerHeartbeat(worker="w", pool="p"))
        assert seq == 1


def test_a_port_taken_before_the_first_start_moves_the_whole_cluster(tmp_path: Path) -> None:
    """Ports are picked at construction; one taken by then must not fail the start."""
    cluster = EmbeddedCluster(tmp_path, size=2)
    route = cluster.nodes[1].cluster
    assert route is not None
    with socket.socket() as held:
        held.bind(("127.0.0.1", route.cluster_port))
        held.listen()
        with cluster:
            ports = [
                (n.port, n.monitor_port, n.cluster and n.cluster.cluster_port)
                for n in cluster.nodes
            ]
            assert route.cluster_port not in {p for trio in ports for p in trio}
            assert all(node.running for node in cluster.nodes)


@pytest.mark.anyio
async def test_the_stream_is_created_once_a_cluster_still_forming_answers(
    tmp_path: Path,
) -> None:
    """Nodes just started, each ready alone: JetStream has no meta leader yet and does not
    answer. Creating the stream waits for it (a daemon started beside its NATS nodes) instead
    of failing."""
    cluster = EmbeddedCluster(tmp_path)
    try:
        for node in cluster.nodes:
            node.start()  # not cluster.start(), which waits for the meta leader
        config = LogConfig(servers=cluster.urls, stream="R3", replicas=3, reconnect_wait=0.1)
        info = await _ensured(config)
        assert info.config.num_replicas == 3
    finally:
        cluster.stop()
