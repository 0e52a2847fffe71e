"""Start-up reports: parameter counts per group and each parameter's shape, dtype and sharding."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from flax import nnx


def _model_parallel(sharding) -> bool:
    """Whether the mesh has an axis meant to split weights (pure data parallelism replicates them)."""
    shape = getattr(getattr(sharding, "mesh", None), "shape", {})
    return any(size > 1 for axis, size in dict(shape).items() if axis != "data")


def param_table(params: nnx.State, *, max_rows: int = 60) -> str:
    """A markdown table of parameters (path, shape, dtype, logical axes, mesh spec) and totals.

    Also warns, in the last line, when more than 2% of the parameter bytes are replicated on a
    mesh with an fsdp, tensor or expert axis (usually a rule that does not match).
    """
    rows: list[str] = []
    groups: defaultdict[str, int] = defaultdict(int)
    total = replicated_bytes = total_bytes = 0
    for path, var in nnx.to_flat_state(params):
        value = var.get_value()
        name = ".".join(str(p) for p in path)
        axes = var.get_metadata().get("out_sharding")
        sharding = getattr(value, "sharding", None)
        spec = getattr(sharding, "spec", None)
        n = int(np.prod(value.shape))
        total += n
        nbytes = n * np.dtype(value.dtype).itemsize
        total_bytes += nbytes
        if sharding is not None and _model_parallel(sharding) and sharding.is_fully_replicated:
            replicated_bytes += nbytes
        groups[str(path[0])] += n
        rows.append(f"| {name} | {tuple(value.shape)} | {value.dtype} | {axes} | {spec} |")
    lines = ["| parameter | shape | dtype | logical axes | mesh spec |", "|---|---|---|---|---|"]
    lines += rows[:max_rows]
    if len(rows) > max_rows:
        lines.append(f"| ... {len(rows) - max_rows} more | | | | |")
    lines.append("")
    lines.append(
        "parameters: "
        + ", ".join(f"{g} {n / 1e6:.2f}M" for g, n in groups.items())
        + f"; total {total / 1e6:.2f}M"
    )
    if total_bytes and replicated_bytes / total_bytes > 0.02:
        lines.append(
            f"warning: {100 * replicated_bytes / total_bytes:.0f}% of parameter bytes are replicated on every "
            "device; check the mesh and the logical axis rules"
        )
    return "\n".join(lines)
