"""A real lab (the default shape with 2 shards: store nodes with replicas, three sentinels and two
proxies following them, on 127.0.0.1, OS-assigned ports): every process's /metrics serves what the code declares, and every metric the alert
rules and the Grafana dashboard use is there, with the labels they match on."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shardgate.lab import Lab, LabConfig, up
from tests.compose import catalog

KIND_OF_ROLE = {"primary": "node", "replica": "node", "proxy": "proxy", "sentinel": "sentinel"}
TARGET_LABELS = {"job", "process", "shard", "instance"}  # added by Prometheus, not the process


def _sentinels_available() -> bool:
    return catalog.METRIC_MODULES["sentinel"].exists()


@pytest.fixture(scope="module")
def live_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab")
    sentinels = 3 if _sentinels_available() else 0
    config = LabConfig(directory=str(directory), shards=2, sentinels=sentinels, base_port=0)
    with up(config, die_with_parent=True, timeout=60) as lab:
        host, port = lab.address("proxy0")
        client = redis.Redis(host=host, port=port, socket_timeout=5)
        try:
            for i in range(200):  # traffic on every shard: per-command families get samples
                client.set(f"key:{i}", "v", ex=60)
                client.get(f"key:{i}")
            client.get("missing")
        finally:
            client.close()
        yield lab


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def _families(text: str) -> dict[str, tuple[str, set[str], set[str]]]:
    """family (counters with _total) → (type, sample names, label names of its samples)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("shardgate_"):
            continue
        name = catalog.family_name(fam.name, fam.type)
        labels = {label for s in fam.samples for label in s.labels if label != "le"}
        out[name] = (fam.type, {s.name for s in fam.samples}, labels)
    return out


Families = dict[str, tuple[str, set[str], set[str]]]


@pytest.fixture(scope="module")
def scrapes(live_lab: Lab) -> dict[str, str | urllib.error.HTTPError]:
    """process → its /metrics text, or the HTTP error it answered with."""
    out: dict[str, str | urllib.error.HTTPError] = {}
    deadline = time.monotonic() + 30
    for rec in live_lab.records.values():
        spec = rec.spec
        assert spec.metrics_port, f"{spec.name} serves no metrics"
        while True:
            try:
                out[spec.name] = _scrape(spec.metrics_port)
                break
            except urllib.error.HTTPError as exc:
                out[spec.name] = exc
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return out


@pytest.fixture(scope="module")
def scraped(
    live_lab: Lab, scrapes: dict[str, str | urllib.error.HTTPError]
) -> dict[str, dict[str, Families]]:
    """kind (node/proxy/sentinel) → process → its families, for every scrape that worked."""
    out: dict[str, dict[str, Families]] = {}
    for name, text in scrapes.items():
        if isinstance(text, str):
            kind = KIND_OF_ROLE[live_lab.record(name).spec.role]
            out.setdefault(kind, {})[name] = _families(text)
    return out


# Families whose samples appear only after something happens elsewhere (none at the moment:
# the lab's proxies report their epoch to the sentinels, SG.PROXYEPOCH, from the start).
NO_SAMPLES_UNTIL_EVENT: set[str] = set()


def _expected_kinds() -> set[str]:
    return {"node", "proxy"} | ({"sentinel"} if _sentinels_available() else set())


@pytest.mark.parametrize("kind", ["node", "proxy", "sentinel"])
def test_every_process_answers_its_metrics_scrape(
    kind: str, live_lab: Lab, scrapes: dict[str, str | urllib.error.HTTPError]
) -> None:
    if kind not in _expected_kinds():
        pytest.skip(f"no {kind} metrics module yet")
    names = [n for n in scrapes if KIND_OF_ROLE[live_lab.record(n).spec.role] == kind]
    assert names, f"the lab runs no {kind}"
    failed = {n: str(scrapes[n]) for n in names if not isinstance(scrapes[n], str)}
    assert not failed, failed
    if kind == "node":
        assert len(names) == 4


def test_served_families_are_the_declared_ones(
    scraped: dict[str, dict[str, Families]],
) -> None:
    """What the static checks read from the code is what the processes serve."""
    declared = catalog.exported_metrics()
    for kind, processes in scraped.items():
        for process, families in processes.items():
            served = {name: typ for name, (typ, _, _) in families.items()}
            assert served == declared[kind], f"{process}: served and declared families differ"


def test_every_metric_the_rules_and_dashboard_use_is_served(
    scraped: dict[str, dict[str, Families]],
) -> None:
    missing = []
    for where, expr in catalog.all_exprs():
        for name in catalog.promql_metrics(expr):
            kind = catalog.role_of(name)
            if kind not in scraped:
                continue
            samples = set().union(
                *(s for fams in scraped[kind].values() for _, s, _ in fams.values())
            )
            if name not in samples:
                if name in NO_SAMPLES_UNTIL_EVENT:
                    continue
                planned = catalog.documented_metrics()
                if any(planned.get(f) for f in planned if name.startswith(f)):
                    continue  # documented as planned (docs/metrics.md)
                missing.append(f"{where}: {name}")
    assert not missing, "served by no process of the lab:\n" + "\n".join(missing)


def test_label_matchers_match_served_labels(
    scraped: dict[str, dict[str, Families]],
) -> None:
    labels: dict[str, set[str]] = {}
    for processes in scraped.values():
        for families in processes.values():
            for _, samples, names in families.values():
                for sample in samples:
                    labels.setdefault(sample, set()).update(names)
    bad = []
    for where, expr in catalog.all_exprs():
        for metric, label in catalog.promql_matcher_labels(expr):
            if metric in labels and label not in labels[metric] | TARGET_LABELS:
                bad.append(f"{where}: {metric} has no label {label!r}")
    assert not bad, "\n".join(bad)


def test_replication_and_roles_read_right(live_lab: Lab) -> None:
    text = _scrape(live_lab.record("node0").spec.metrics_port or 0)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    role = {dict(k[1])["role"]: v for k, v in values.items() if k[0] == "shardgate_node_role"}
    assert role["primary"] == 1 and role["replica"] == 0
    replicas = [v for k, v in values.items() if k[0] == "shardgate_node_connected_replicas"]
    assert replicas == [1]
