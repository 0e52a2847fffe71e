"""Loss curves from metrics.jsonl files, drawn with matplotlib (no display needed).

Steps logged twice (a run resumed after a crash re-logs the steps after its last checkpoint) keep
their last value.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from matplotlib.figure import Figure  # the OO API: no pyplot state, no backend switch


def load_series(path: pathlib.Path, key: str) -> tuple[list[int], list[float]]:
    """Step and value of ``key`` in a metrics.jsonl file, deduplicated by step (last wins)."""
    by_step: dict[int, float] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if key in rec and "step" in rec:
            by_step[int(rec["step"])] = float(rec[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot(
    runs: list[pathlib.Path],
    keys: list[str],
    out: pathlib.Path,
    *,
    events: str = "growth",
    x: str = "step",
) -> pathlib.Path:
    """Plots ``keys`` of every run against ``x`` (``"step"`` or a logged metric such as
    ``"flops"``), one panel per key, with a dashed line at every step that logged ``events``
    (the growths of a staged run)."""
    fig = Figure(figsize=(6 * len(keys), 4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for run in runs:
            path = run / "metrics.jsonl" if run.is_dir() else run
            steps: Sequence[float]  # the steps, or the values of ``x`` at them
            steps, values = load_series(path, key)
            where = dict(zip(*load_series(path, x), strict=True)) if x != "step" else None
            if where is not None:  # keep the points whose x was logged at the same step
                kept = [(where[s], v) for s, v in zip(steps, values, strict=True) if s in where]
                steps, values = [p[0] for p in kept], [p[1] for p in kept]
            if steps:
                line = ax.plot(steps, values, label=run.name if run.is_dir() else run.parent.name)[0]
                for s, _ in zip(*load_series(path, events), strict=True):
                    at = s if where is None else where.get(s)
                    if at is not None:
                        ax.axvline(at, color=line.get_color(), linestyle="--", alpha=0.6)
        if x != "step":
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
