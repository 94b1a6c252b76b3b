"""``--plot FILE.png``: latency percentiles and throughput over time (matplotlib, optional).

matplotlib is the extra ``bench``, which the Makefile's venv (``make lab``, ``make test``) installs;
a bare ``pip install shardgate`` leaves it out, and then ``--plot`` fails before the run starts
and says how to install it.
"""

from __future__ import annotations

import importlib.util
import textwrap

from bench.loadstats import Result

INSTALL_HINT = (
    "--plot needs matplotlib (make lab installs it): .venv/bin/pip install 'shardgate[bench]' "
    "(or: pip install matplotlib; Debian: apt-get install python3-matplotlib)"
)


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(result: Result, path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    # Whole seconds only: the last, partial one (replies drained after the end) would read low.
    timeline = [s for s in result.timeline if s.second + 1 <= result.elapsed_s] or list(
        result.timeline
    )
    seconds = [s.second + 1 for s in timeline]
    fig, (lat, thr) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for attr, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
        lat.plot(seconds, [getattr(s, attr) / 1000 for s in timeline], label=label)
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms, log)")
    lat.legend(loc="upper right")
    lat.grid(True, which="both", alpha=0.3)
    thr.plot(seconds, [s.ops for s in timeline], color="tab:green", label="ops/s")
    errors = [s.errors for s in timeline]
    if any(errors):
        thr.bar(seconds, errors, color="tab:red", alpha=0.6, label="errors/s")
    thr.set_ylabel("per second")
    thr.set_xlabel("seconds into the measured run")
    thr.legend(loc="lower right")
    thr.grid(True, alpha=0.3)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
