"""TPU chips and topologies by name, and their devices for compiling without a TPU attached.

Names are MaxText's (``v5e-256``, ``v5p-128``, ``v4-32``, ``v6e-64``: chips for v5e / v6e,
TensorCores, two per chip, for v4 / v5p) or the compiler's (``v5e:16x16``, ``v5p:4x4x4``). The chip
figures are Google Cloud's published per-chip specifications (Cloud TPU system architecture pages):
peak bf16 FLOP/s, HBM capacity and bandwidth, and the inter-chip interconnect (ICI) bandwidth. They
feed the roofline estimate only; whether a step fits comes from the TPU compiler itself.

Example:
    >>> t = parse_topology("v5p-128")
    >>> t.name, t.chips, t.chip.hbm_gib
    ('v5p:4x4x4', 64, 95.0)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    """One TPU chip: ``peak_flops`` bf16 FLOP/s, ``hbm_gib`` HBM, ``hbm_gbps`` HBM bandwidth in GB/s,
    ``ici_gbps`` inter-chip interconnect bandwidth in Gbit/s (all per chip)."""

    generation: str
    peak_flops: float
    hbm_gib: float
    hbm_gbps: float
    ici_gbps: float
    cores_per_chip: int  # how many TensorCores MaxText's ``vX-N`` name counts per chip
    dims: int  # torus dimensions

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)

    @property
    def ici_bytes_per_s(self) -> float:
        return self.ici_gbps * 1e9 / 8


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32.0, 1228.0, 2400.0, 2, 3),
    "v5e": Chip("v5e", 197e12, 16.0, 819.0, 1600.0, 1, 2),
    "v5p": Chip("v5p", 459e12, 95.0, 2765.0, 4800.0, 2, 3),
    "v6e": Chip("v6e", 918e12, 32.0, 1640.0, 3584.0, 1, 2),
}

# chips -> physical shape of a slice (the shapes MaxText and Cloud TPU list)
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}


@dataclass(frozen=True)
class Topology:
    """A slice of ``chip`` with physical ``shape`` (e.g. ``(16, 16)``), times ``slices`` over DCN."""

    chip: Chip
    shape: tuple[int, ...]
    slices: int = 1

    @property
    def name(self) -> str:
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.slices

    def label(self) -> str:
        return self.name if self.slices == 1 else f"{self.slices} x {self.name}"


def parse_topology(spec: str, slices: int = 1) -> Topology:
    """``v5e-256`` / ``v5e:16x16`` / ``v5p-128`` ... as a :class:`Topology` of ``slices`` slices."""
    if not isinstance(slices, int) or slices < 1:
        raise ValueError(f"slices must be an integer >= 1, got {slices!r}")
    known = ", ".join(CHIPS)
    m = re.fullmatch(r"(v\d+[a-z]?)([-:])([\dx]+)", spec.strip().lower())
    if not m or m.group(1) not in CHIPS:
        raise ValueError(
            f"unknown TPU topology {spec!r}: expected GENERATION-N (MaxText's names, e.g. v5e-256, v5p-128) "
            f"or GENERATION:AxB[xC] (e.g. v5e:16x16, v5p:4x4x4), with GENERATION one of {known}"
        )
    chip = CHIPS[m.group(1)]
    shapes = _SHAPES_3D if chip.dims == 3 else _SHAPES_2D
    if m.group(2) == ":":
        shape = tuple(int(s) for s in m.group(3).split("x") if s)
        if len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(
                f"topology {spec!r}: a {chip.generation} slice has {chip.dims} axes, like {next(iter(shapes.values()))}"
            )
        return Topology(chip, shape, slices)
    n = int(m.group(3))
    if n % chip.cores_per_chip or n // chip.cores_per_chip not in shapes:
        sizes = ", ".join(f"{chip.generation}-{c * chip.cores_per_chip}" for c in shapes)
        raise ValueError(f"topology {spec!r}: no {chip.generation} slice of that size; known sizes: {sizes}")
    return Topology(chip, tuple(int(s) for s in shapes[n // chip.cores_per_chip].split("x")), slices)


def topology_devices(topo: Topology) -> list:
    """Compile-only devices of ``topo`` from libtpu (no TPU needed; ``pip install jaxslim[aot]``).

    Raises:
        RuntimeError: libtpu is not installed.
    """
    import importlib.util

    import jax
    from jax.experimental import topologies

    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(
            "compiling for a TPU topology needs libtpu: install the aot extra "
            "(pip install 'jaxslim[aot]', or `make aot` for .venv-aot)"
        )
    # several processes may load libtpu at once (tests, a benchmark beside a compile)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"num_slices": topo.slices} if topo.slices > 1 else {}
    desc = topologies.get_topology_desc(topology_name=topo.name, platform="tpu", **kwargs)
    del jax
    return list(desc.devices)
