"""PNG plots written next to a results JSON (`results/x.json` -> `results/x-<name>.png`).

matplotlib is an optional dependency (`pip install 'banyan[bench]'`); without it the
plots are skipped with a note.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install 'banyan[bench]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _path(out: Path, name: str) -> Path:
    return out.with_name(f"{out.stem}-{name}.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    return path


def _label(run: dict) -> str:
    rate = "inf" if run["request_rate"] is None else f"{run['request_rate']:g}"
    return f"rate {rate}, conc {run['max_concurrency'] or 'unlimited'}"


def serving_plots(runs: list[dict], out: Path) -> list[Path]:
    """Latency CDFs of every run, and throughput against concurrency when that was swept."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("ttft_s", "e2e_s"), ("time to first token", "end-to-end latency")):
        for run in runs:
            values = np.sort(run["latencies"][key])
            ax.plot(values, np.arange(1, len(values) + 1) / max(len(values), 1), label=_label(run))
        ax.set(title=title, xlabel="seconds", ylabel="fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    written.append(_save(fig, _path(out, "latency-cdf")))
    swept = [r for r in runs if r["max_concurrency"]]
    if len({r["max_concurrency"] for r in swept}) > 1:
        swept.sort(key=lambda r: r["max_concurrency"])
        fig, ax1 = plt.subplots(figsize=(6, 4))
        conc = [r["max_concurrency"] for r in swept]
        tokens = ax1.plot(conc, [r["output_token_throughput"] for r in swept], "o-", label="output tokens/s")
        ax1.set(xscale="log", xlabel="max concurrency", ylabel="output tokens / s", title="throughput vs concurrency")
        ax1.set_xticks(conc, [str(c) for c in conc])
        ax1.minorticks_off()
        ax2 = ax1.twinx()
        requests = ax2.plot(conc, [r["request_throughput"] for r in swept], "s--", color="tab:orange",
                            label="requests/s")
        ax2.set_ylabel("requests / s")
        ax1.grid(alpha=0.3)
        ax1.legend(handles=tokens + requests, loc="upper left", fontsize=8)
        written.append(_save(fig, _path(out, "throughput-vs-concurrency")))
    plt.close("all")
    return written


def system_bars(workloads: dict[str, dict], out: Path, metric: str = "requests_per_s",
                ylabel: str = "requests / s", title: str = "offline throughput", name: str = "systems") -> list[Path]:
    """One bar per system (e.g. cache on, cache off, HF) for each workload: `metric` of
    `workloads[w]["systems"][system]`."""
    plt = _pyplot()
    if plt is None:
        return []
    names = list(workloads)
    systems = list(dict.fromkeys(s for w in workloads.values() for s in w["systems"]))
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(names), 4))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = [workloads[n]["systems"].get(system, {}).get(metric, 0.0) for n in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=system)
    ax.set_xticks(np.arange(len(names)) + width * (len(systems) - 1) / 2, names)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path = _save(fig, _path(out, name))
    plt.close("all")
    return [path]


def offline_plots(workloads: dict[str, dict], out: Path) -> list[Path]:
    """Requests/s of each system (cache on, cache off, HF) per offline workload."""
    return system_bars(workloads, out)
