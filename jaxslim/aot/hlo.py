"""Collectives of a compiled executable, read from its HLO text (``compiled.as_text()``).

Each collective is counted as often as it runs per step: one inside a scanned stack's ``while``
body runs once per iteration (the trip count is XLA's ``known_trip_count`` or the constant the loop condition compares
with). The TPU compiler writes a reduce-scatter as an all-reduce inside a fusion named
``all-reduce-scatter``; it is counted as the reduce-scatter it is. The bytes a chip
sends for each follow the ring algorithms' volumes, ``(n - 1) / n`` of the buffer for an all-gather
(of its output), reduce-scatter (of its input) or all-to-all, twice that for an all-reduce; a
collective-permute sends its whole buffer. These are estimates for a roofline, not measurements.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_WHILE = re.compile(r"\bwhile\(.*?body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLS = re.compile(r"\b(?:calls|body|branch_computations)=\{?%?([\w.\-, %]+)\}?")


@dataclass(frozen=True)
class Collective:
    """One collective in the HLO: its kind, the buffer it moves (dtype, shape), the size ``group`` of
    its replica groups and ``runs``, how often it runs per step."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    group: int
    runs: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        """Size of the buffer (the gathered output of an all-gather, the input of a reduce-scatter)."""
        return self.elements * _BYTES.get(self.dtype, 4)

    @property
    def sent_bytes(self) -> float:
        """Bytes one chip sends per run (ring algorithms)."""
        n = max(self.group, 1)
        if self.kind == "collective-permute":
            return float(self.bytes)
        frac = (n - 1) / n
        return self.bytes * frac * (2 if self.kind == "all-reduce" else 1)


def _group_size(line: str) -> int:
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    if m:
        return len(m.group(1).split(","))
    # mesh['axis_0'=16,'axis_1'=16] {'axis_1'}, or with a device order: ..., device_ids=([16,16]T(1,0)) {...}
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\S+)?\s*\{([^}]*)\}", line)
    if m:
        sizes = dict(re.findall(r"'?(\w+)'?=(\d+)", m.group(1)))
        names = re.findall(r"'?(\w+)'?", m.group(2))
        return math.prod(int(sizes[n]) for n in names if n in sizes) or 1
    m = re.search(r"source_target_pairs=\{([^}]*)\}", line)
    return 2 if m else 1


def _result_arrays(text: str, start: bool) -> list[tuple[str, tuple[int, ...]]]:
    arrays = [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _ARRAY.findall(text)]
    if start and len(arrays) > 1:  # an async start's tuple holds (inputs, outputs): the outputs
        arrays = arrays[len(arrays) // 2 :]
    return arrays


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
    trip = _TRIP.search(line)
    if trip:
        return int(trip.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", line)
    consts = (
        [
            int(c)
            for c in re.findall(r"s32\[\][^=]*constant\((\d+)\)", "\n".join(comps.get(cond.group(1), [])))
        ]
        if cond
        else []
    )
    return max(consts) if consts else 1


def _parse_computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # tuple index comments hold "="
        m = _COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
            continue
        if current is not None:
            comps[current].append(line)
    return comps, entry


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of ``hlo_text`` (one per buffer of a combined one) with its per-step runs."""
    comps, entry = _parse_computations(hlo_text)
    runs: dict[str, int] = {}

    def visit(name: str, times: int) -> None:
        if name not in comps or runs.get(name, 0) >= times:
            return
        runs[name] = times
        for line in comps[name]:
            w = _WHILE.search(line)
            if w:
                visit(w.group(1), times * _trip_count(line, comps))
                continue
            for c in _CALLS.finditer(line):
                for callee in c.group(1).split(","):
                    visit(callee.strip().lstrip("%"), times)

    if entry is not None:
        visit(entry, 1)
    found = []
    for name, lines in comps.items():
        scatter = name.startswith("all-reduce-scatter")
        for line in lines:
            m = _OP.search(line)
            if not m:
                continue
            kind = "reduce-scatter" if scatter and m.group(2) == "all-reduce" else m.group(2)
            group = _group_size(line)
            for dtype, shape in _result_arrays(m.group(1), bool(m.group(3))):
                if kind == "reduce-scatter" and not scatter:  # the volume is of the input
                    shape = (math.prod(shape) * group,)
                found.append(Collective(kind, dtype, shape, group, runs.get(name, 1)))
    return found


def summarize(found: list[Collective]) -> dict[str, dict]:
    """Per kind: ``ops`` (in the HLO), ``runs`` per step, ``bytes`` (buffers, per step) and
    ``sent_bytes`` per chip per step, and the ``largest`` buffer as ``dtype[shape]``."""
    out: dict[str, dict] = {}
    for c in found:
        s = out.setdefault(c.kind, {"ops": 0, "runs": 0, "bytes": 0, "sent_bytes": 0.0, "largest": None})
        s["ops"] += 1
        s["runs"] += c.runs
        s["bytes"] += c.bytes * c.runs
        s["sent_bytes"] += c.sent_bytes * c.runs
        if s["largest"] is None or c.bytes > s["largest"][0]:
            s["largest"] = (c.bytes, f"{c.dtype}[{','.join(map(str, c.shape))}]")
    for s in out.values():
        s["largest"] = s["largest"][1]
    return out
