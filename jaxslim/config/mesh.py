"""Device mesh config: axis sizes, axis type and the logical-axis rules held as data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxslim.config.validate import Config

MESH_AXES = ("data", "fsdp", "context", "tensor", "expert")

# Logical axis name -> mesh axes, in priority order. Held as data so a user can swap the layout
# without touching a layer. `None` means replicated.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | str | None], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", "context"),
    ("embed", ("fsdp", "context")),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("vocab", "tensor"),
    ("exp", "expert"),
    ("layers", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_exp", "expert"),
    ("act_vocab", "tensor"),
)


@dataclass(frozen=True)
class MeshConfig(Config):
    """Device mesh with axes ``data``, ``fsdp``, ``context``, ``tensor``, ``expert``.

    ``context`` is context (sequence) parallelism for long sequences: activations are split along
    their length, each attention gathers its keys and values, and the weights are sharded over it
    as over ``fsdp``.

    One size may be ``-1``: it takes whatever devices the others leave. ``axis_type`` is ``"auto"``
    (GSPMD propagation, the default) or ``"explicit"`` (sharding in types).

    Example:
        >>> MeshConfig(data=2, tensor=-1).sizes(8)
        (2, 1, 1, 4, 1)
    """

    data: int = -1
    fsdp: int = 1
    context: int = 1
    tensor: int = 1
    expert: int = 1
    axis_type: Literal["auto", "explicit"] = "auto"
    rules: tuple[tuple[str, tuple[str, ...] | str | None], ...] = DEFAULT_RULES

    def _check(self) -> None:
        sizes = {a: getattr(self, a) for a in MESH_AXES}
        for a, s in sizes.items():
            if s < 1 and s != -1:
                raise ValueError(f"MeshConfig.{a} must be a positive integer or -1, got {s!r}")
        if list(sizes.values()).count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1 (fill), got {sizes}")
        for name, axes in self.rules:
            unknown = [a for a in ((axes,) if isinstance(axes, str) else axes or ()) if a not in MESH_AXES]
            if unknown:
                raise ValueError(
                    f"MeshConfig.rules maps {name!r} to unknown mesh axes {unknown}; mesh axes are {MESH_AXES}"
                )

    def sizes(self, n_devices: int) -> tuple[int, ...]:
        sizes = [getattr(self, a) for a in MESH_AXES]
        fixed = 1
        for s in sizes:
            fixed *= s if s != -1 else 1
        if -1 in sizes:
            if n_devices % fixed:
                raise ValueError(
                    f"MeshConfig {dict(zip(MESH_AXES, sizes, strict=False))}: {n_devices} devices are not divisible "
                    f"by the fixed axes' product {fixed}"
                )
            sizes[sizes.index(-1)] = n_devices // fixed
        elif fixed != n_devices:
            raise ValueError(
                f"MeshConfig {dict(zip(MESH_AXES, sizes, strict=False))} needs {fixed} devices, {n_devices} are available"
            )
        return tuple(sizes)
