"""min-replicas counts replicas that *receive* the stream, judged on the primary's clock.

The primary stamps every replication link every 100 ms and replicas echo the newest stamp in
their acks (``storenode/replication.py``). A replica whose incoming stream is stalled keeps
acking, but echoes an ever older stamp: within ``min_replicas_max_lag`` the primary stops
counting it and refuses writes, and counts it again as soon as the stream flows. (Judged by the
replica's own send time, as before, its acks looked fresh and the primary took writes its only
replica would never see, for as long as the stall lasted.)
"""

from __future__ import annotations

import time
from pathlib import Path

import redis
import trio

from tests.faults.cluster import Cluster, ShardSpec, wait_until
from tests.faults.processes import Services, in_thread

MAX_LAG = 1


def writable(r: redis.Redis) -> bool:
    try:
        r.set("probe", "x")
    except redis.ResponseError as exc:
        assert "NOREPLICAS" in str(exc), exc
        return False
    return True


async def test_a_replica_whose_stream_is_stalled_stops_counting_within_max_lag(
    procs: Services, tmp_path: Path
) -> None:
    def body() -> None:
        args = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(MAX_LAG))
        cluster = Cluster(
            procs,
            [ShardSpec(name="s", replicas=1, node_args=args, replica_links=True)],
            workdir=tmp_path,
            proxies=0,
        ).start()
        shard = cluster.shards["s"]
        link = shard.links[shard.replicas[0].name]
        r = shard.primary.client(timeout=2)
        wait_until(lambda: writable(r), 10, "writes with a replica")
        link.send_control("direction down")  # primary -> replica only: its acks still arrive
        link.send_control("stall on")
        refused = wait_until(lambda: not writable(r), 10, "-NOREPLICAS while the stream stalls")
        time.sleep(1.0)
        still_refused = not writable(r)
        status = link.send_control("status")  # its counters: the acks kept going up
        link.send_control("stall off")
        back = wait_until(lambda: writable(r), 10, "writes once the stream flows")
        print(
            f"min-replicas (max lag {MAX_LAG}s), replica's incoming stream stalled: writes "
            f"refused {refused:.2f}s after the stall (link: {status}), "
            f"still refused 1 s later: {still_refused}; accepted again {back:.2f}s after the "
            f"stall ended"
        )
        assert refused <= MAX_LAG + 0.5, refused
        assert still_refused
        assert back <= 1.0, back
        print(procs.check_survivors())

    with trio.fail_after(60):
        await in_thread(body)
