"""Render the Grafana dashboard's panels from real data during a drill, as one PNG.

How it works: start a local lab (``shardgate.lab``: the default cluster, 3 shards x (primary +
replica) and 2 proxies, with ``--sentinels`` its 3 sentinels too; small maxmemory so eviction
shows), start a real Prometheus (Debian's ``prometheus`` binary)
scraping every process every second with ``compose/prometheus/alerts.yml`` loaded, put a steady
read/write load on each proxy, SIGKILL a primary, start it again, then ask Prometheus for every
panel query of ``compose/grafana/dashboards/shardgate.json`` over the run (``query_range``, the
same PromQL Grafana sends, ``$__rate_interval`` set to 5 s) and plot each panel with matplotlib.
Vertical lines mark the drill's events. Everything started is stopped on the way out.

    apt-get install prometheus            # the prometheus binary (CI installs it for promtool)
    .venv/bin/pip install matplotlib      # one-off: only this script uses it
    .venv/bin/python compose/render_dashboard.py --out docs/observability-drill.png

``--sentinels`` runs the lab's sentinels (managed nodes, proxies following them): the drill is
then a failover, and the restarted old primary rejoins as a replica. Without it the lab is static
and the killed primary's shard is unreachable until it is back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shardgate.lab import Lab, LabConfig, free_ports, up  # noqa: E402
from shardgate.lab_config import Endpoint, prometheus_targets  # noqa: E402

DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "shardgate.json"
ALERTS = ROOT / "compose" / "prometheus" / "alerts.yml"
RATE_INTERVAL = "5s"  # Grafana's $__rate_interval for a 1 s scrape is 4 s; 5 s smooths a little
SCRAPE_INTERVAL = "1s"
ALERTS_FIRING = 'count by (alertname) (ALERTS{alertstate="firing"})'
Series = list[tuple[str, list[tuple[float, float]]]]


def lab_endpoints(lab: Lab) -> list[Endpoint]:
    out = []
    for rec in lab.records.values():
        s = rec.spec
        assert s.metrics_port is not None
        out.append(
            Endpoint(
                name=s.name,
                role=s.role,
                shard=s.shard,
                host=s.host,
                bind=s.host,
                port=s.port,
                metrics_port=s.metrics_port,
            )
        )
    return out


@contextlib.contextmanager
def prometheus(workdir: Path, lab: Lab) -> Iterator[str]:
    """A Prometheus scraping the lab; yields its base URL."""
    exe = shutil.which("prometheus")
    if exe is None:
        raise SystemExit("needs the prometheus binary: apt-get install prometheus")
    (workdir / "targets.json").write_text(prometheus_targets(lab_endpoints(lab)))
    shutil.copy(ALERTS, workdir / "alerts.yml")
    (workdir / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: shardgate\n"
        "    file_sd_configs: [{files: [targets.json], refresh_interval: 1s}]\n"
    )
    (port,) = free_ports(1)
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(base + "/-/ready", timeout=1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"prometheus did not start; see {workdir / 'prometheus.log'}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query_range(base: str, expr: str, start: float, end: float) -> Series:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        data = json.load(resp)
    out: Series = []
    for result in data["data"]["result"]:
        points = [(float(t), float(v)) for t, v in result["values"]]
        out.append((json.dumps(result["metric"], sort_keys=True), points))
    return out


def legend(fmt: str, labels_json: str) -> str:
    labels = json.loads(labels_json)
    text = fmt
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", str(value))
    while "{{" in text:  # a label the series lacks
        a = text.index("{{")
        b = text.index("}}", a)
        text = text[:a] + text[b + 2 :]
    return text.strip() or labels_json


class Load:
    """Steady SET/GET traffic on the proxy from one thread; errors counted, never raised."""

    def __init__(self, host: str, port: int, *, rate: float = 400.0) -> None:
        self.host, self.port, self.rate = host, port, rate
        self.ok = self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        rng = random.Random(7)
        value = b"x" * 1024
        next_at = time.monotonic()
        while not self._stop.is_set():
            key = f"key:{rng.randrange(20000)}"
            try:
                if rng.random() < 0.5:
                    client.set(key, value, ex=300)
                else:
                    client.get(key)
                self.ok += 1
            except redis.RedisError:
                self.errors += 1
            next_at += 1 / self.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                next_at = time.monotonic()
        client.close()


def plot(
    dashboard: dict[str, Any],
    base: str,
    start: float,
    end: float,
    events: list[tuple[float, str]],
    out: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, str, list[tuple[str, list[tuple[float, float]]]]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.append(("row", panel["title"], []))
            continue
        series = []
        for target in panel["targets"]:
            for labels, points in query_range(base, target["expr"], start, end):
                series.append((legend(target.get("legendFormat", ""), labels), points))
        panels.append((panel["type"], panel["title"], series))
    alerts = [
        (legend("{{alertname}}", labels), points)
        for labels, points in query_range(base, ALERTS_FIRING, start, end)
    ]
    panels.append(("state-timeline", "Alerts firing (compose/prometheus/alerts.yml)", alerts))
    cols = 4
    graphs = [p for p in panels if p[0] != "row"]
    rows = math.ceil(len(graphs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 3.1), squeeze=False)
    fig.suptitle(title, fontsize=14, x=0.01, ha="left")
    for ax, (kind, name, series) in zip(axes.flat, graphs):
        ax.set_title(name, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        for t, _label in events:
            ax.axvline(t - start, color="red", linewidth=0.8, linestyle="--")
        if not series:
            ax.text(
                0.5,
                0.5,
                "no data in this lab",
                ha="center",
                va="center",
                fontsize=8,
                color="grey",
                transform=ax.transAxes,
            )
            ax.set_xlim(0, end - start)
            ax.set_yticks([])
            continue
        for label, points in series[:12]:
            xs = [t - start for t, _ in points]
            ys = [v for _, v in points]
            if kind == "state-timeline":
                ax.step(xs, ys, where="post", label=label, linewidth=1)
            else:
                ax.plot(xs, ys, label=label, linewidth=1)
        ax.legend(fontsize=6, loc="upper left", ncol=2, frameon=False)
        ax.set_xlim(0, end - start)
        ax.set_xlabel("seconds", fontsize=7)
    for ax in list(axes.flat)[len(graphs) :]:
        ax.axis("off")
    for t, label in events:
        axes.flat[0].annotate(
            label,
            (t - start, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="red",
            rotation=90,
            va="top",
            ha="right",
        )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/observability-drill.png")
    parser.add_argument("--victim", default="node1", help="the primary to kill (default node1)")
    parser.add_argument("--warmup", type=float, default=25.0, help="seconds before the kill")
    parser.add_argument("--down", type=float, default=20.0, help="seconds the victim stays dead")
    parser.add_argument("--after", type=float, default=30.0, help="seconds after the restart")
    parser.add_argument("--sentinels", action="store_true", help="also run three sentinels")
    args = parser.parse_args(argv)
    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory(prefix="sg-render-") as tmp:
        workdir = Path(tmp)
        config = LabConfig(
            directory=str(workdir / "lab"),
            shards=3,
            replicas=1,
            sentinels=3 if args.sentinels else 0,
            proxies=2,
            base_port=0,
            maxmemory="2mb",  # small, so the load makes the nodes evict within the run
            maxmemory_policy="allkeys-lru",
        )
        with up(config, die_with_parent=True, timeout=60) as lab, prometheus(workdir, lab) as base:
            events: list[tuple[float, str]] = []
            start = time.time()
            with contextlib.ExitStack() as loads:
                load = [
                    loads.enter_context(Load(*lab.address(p), rate=200.0))
                    for p in ("proxy0", "proxy1")
                ]
                time.sleep(args.warmup)
                events.append((time.time(), f"kill -9 {args.victim}"))
                lab.kill(args.victim)
                print(f"killed {args.victim}", flush=True)
                time.sleep(args.down)
                lab.restart(args.victim)
                events.append((time.time(), f"restart {args.victim}"))
                print(f"restarted {args.victim}", flush=True)
                time.sleep(args.after)
            end = time.time()
            time.sleep(2)  # let the last scrapes land
            ok, errors = sum(x.ok for x in load), sum(x.errors for x in load)
            print(f"load: {ok} ok, {errors} errors", flush=True)
            title = (
                "shardgate dashboard, rendered from a real lab (3 shards x primary + replica, "
                f"2 proxies{', 3 sentinels' if args.sentinels else ''}): "
                f"SIGKILL {args.victim}, restart after {args.down:g} s"
            )
            plot(dashboard, base, start, end, events, Path(args.out), title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
