"""Meshes, logical axis rules, parameter and batch placement, and the shared layer-axis helper.

Every weight in jaxslim carries logical axis names (``("embed", "mlp")``, ``("layers", "embed",
"heads", "head_dim")``, ...). This module turns those names into ``NamedSharding``s on a mesh built
from a :class:`~jaxslim.config.MeshConfig`, using rules held as data. A mesh axis that does not
divide a dimension is dropped for that dimension (the dimension is replicated instead), so odd
vocabulary sizes such as BERT's 30522 still shard everywhere else.

The layer-axis helpers let per-layer code (trust ratios, growth, masks, compression statistics)
treat a scanned stack of N layers as N layers rather than one tensor.

Example:
    >>> import jax
    >>> from jaxslim.config import MeshConfig
    >>> mesh = make_mesh(MeshConfig(data=-1))
    >>> logical_to_spec(("batch", "length"), MeshConfig().rules, mesh, (8, 16))
    P('data',)
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from jaxslim.config import MESH_AXES, MeshConfig
from jaxslim.tree import is_variable

Rules = Sequence[tuple[str, Any]]
LAYERS = "layers"


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ``(data, fsdp, context, tensor, expert)`` mesh described by ``cfg``.

    Axis types are always given explicitly (``jax.make_mesh`` would default to Explicit). An axis
    that is not a product of the TPU torus's physical axes splits one; devices of several slices
    (multi-slice) put the slices on the ``data`` axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = cfg.sizes(len(devices))
    kind = AxisType.Auto if cfg.axis_type == "auto" else AxisType.Explicit
    types = (kind,) * len(sizes)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        return Mesh(_hybrid_devices(sizes, devices, slices), MESH_AXES, axis_types=types)
    try:
        return jax.make_mesh(sizes, MESH_AXES, axis_types=types, devices=devices)
    except NotImplementedError:
        # an axis that is no product of the torus's physical axes (expert=8 on a 4x4x4 v5p):
        # split a physical axis, as MaxText does
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=types)


def _hybrid_devices(sizes: Sequence[int], devices: list, slices: int) -> np.ndarray:
    """Devices of a multi-slice mesh: the slices (joined by the data-center network) split the
    ``data`` axis, each slice's devices fill the rest over its fast interconnect."""
    from jax.experimental import mesh_utils

    data = MESH_AXES.index("data")
    if sizes[data] % slices:
        raise ValueError(
            f"a mesh over {slices} slices puts them on the data axis, so MeshConfig.data must be a "
            f"multiple of {slices}; got data={sizes[data]} (mesh {dict(zip(MESH_AXES, sizes, strict=True))})"
        )
    ici = list(sizes)
    ici[data] //= slices
    dcn = [1] * len(sizes)
    dcn[data] = slices
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)


def _rule_axes(rules: Rules, name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return ()


def logical_to_spec(
    axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh | AbstractMesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Resolves logical axis names to a ``PartitionSpec``.

    A mesh axis is used at most once (the first dimension that asks for it wins), size-1 mesh axes
    are left out, and with ``shape`` a mesh axis that does not divide its dimension is dropped.
    """
    used: set[str] = set()
    out: list[Any] = []
    for i, name in enumerate(axes):
        picked: list[str] = []
        for ax in _rule_axes(rules, name):
            if ax in used:
                continue
            size = mesh.shape[ax] if mesh is not None else 2
            if size == 1:
                continue
            if shape is not None:
                if shape[i] % (math.prod(mesh.shape[a] for a in picked) * size if mesh else 1):
                    continue
            picked.append(ax)
        used.update(picked)
        out.append(None if not picked else picked[0] if len(picked) == 1 else tuple(picked))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def logical_axes(tree: Any) -> Any:
    """The logical axis names of every Variable in ``tree`` (an ``nnx.State`` or module state)."""

    def get(v):
        axes = v.get_metadata().get("out_sharding")
        return tuple(axes) if axes else (None,) * np.ndim(v.get_value())

    return jax.tree.map(get, tree, is_leaf=is_variable)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """``NamedSharding`` for every Variable of ``state``, from its logical axes and shape."""

    def get(v):
        axes = v.get_metadata().get("out_sharding") or ()
        shape = np.shape(v.get_value())
        return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, shape))

    return jax.tree.map(get, state, is_leaf=is_variable)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
    """Places every variable of ``model`` on ``mesh`` according to its logical axes (in place)."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    placed = jax.tree.map(
        lambda v, s: v.replace(jax.device_put(v.get_value(), s)), state, shardings, is_leaf=is_variable
    )
    nnx.update(model, placed)
    return model


def create_sharded(make: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
    """Builds ``make()`` with every weight created directly in its sharding (no host gather).

    Example:
        >>> from jaxslim.config import ModelConfig, MeshConfig
        >>> from jaxslim.models import Transformer
        >>> cfg = ModelConfig.gpt2(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64)
        >>> mesh_cfg = MeshConfig(data=-1)
        >>> m = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), make_mesh(mesh_cfg), mesh_cfg.rules)
    """
    abstract = nnx.eval_shape(make)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.split(make())[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a ``[batch, length, ...]`` input array: split along the batch only (under context
    parallelism the model splits its activations along the length; an LM's ``t + 1`` input tokens
    need not divide)."""
    axes = ("batch",) + (None,) * (ndim - 1)
    return NamedSharding(mesh, logical_to_spec(axes[:ndim], rules, mesh))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules) -> Any:
    """Turns each host's numpy batch (a pytree) into global arrays sharded along ``batch``."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
            batch_sharding(mesh, rules, np.ndim(x)), np.asarray(x)
        ),
        batch,
    )


def context_spec(axes: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec | None:
    """The ``PartitionSpec`` of logical ``axes`` under the active mesh and rules (``None`` outside
    a mesh context or without rules), one entry per dimension of ``shape``."""
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return None
    spec = tuple(logical_to_spec(axes, rules, mesh, shape))
    return PartitionSpec(*spec, *(None,) * (len(shape) - len(spec)))


def spec_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes of one ``PartitionSpec`` entry (``None``, a name or a tuple of names)."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def spec_shards(mesh: Any, entry: Any) -> int:
    """How many pieces one ``PartitionSpec`` entry splits a dimension into on ``mesh``."""
    return math.prod(mesh.shape[a] for a in spec_axes(entry))


def context_shards(axes: Sequence[str | None], shape: Sequence[int]) -> tuple[int, ...]:
    """How many pieces each dimension of ``shape`` (logical ``axes``) is split into under the
    active mesh and rules (all 1 outside a mesh context)."""
    spec = context_spec(axes, shape)
    if spec is None:
        return (1,) * len(shape)
    mesh = jax.sharding.get_abstract_mesh()
    return tuple(spec_shards(mesh, e) for e in spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation to its logical axes under the active mesh and rules.

    A no-op outside a mesh context (``jax.set_mesh``) or without ``nnx.logical_axis_rules``, so
    layers stay usable on a single device with no setup.
    """
    spec = context_spec(axes, x.shape)
    return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


# XLA options for steps on a TPU mesh, only those MaxText uses (benchmarks/xla_flags_library.py,
# REDUCE_SCATTER_FUSION): without them the TPU compiler leaves a weight gradient's all-reduce and
# dynamic-slice apart when the slice is fused into a scanned stack's gradient accumulation, so every
# chip all-reduces every whole weight gradient (measured: Llama-2-7B shapes on v5e-256) instead
# of reduce-scattering it.
TPU_COMPILER_OPTIONS = {
    "xla_tpu_use_minor_sharding_for_major_trivial_input": "true",
    "xla_tpu_relayout_group_size_threshold_for_reduce_scatter": "1",
}


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """The XLA options a step on ``mesh`` compiles with (:data:`TPU_COMPILER_OPTIONS` on TPU)."""
    platform = mesh.devices.flat[0].platform if mesh.devices.size else ""
    return dict(TPU_COMPILER_OPTIONS) if platform == "tpu" else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def shard_gradient(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """``x`` unchanged; its gradient is constrained to logical ``axes`` (a no-op without a mesh).

    A weight's gradient inside a scanned stack is a sum over the batch's devices; constraining it
    to the weight's own (FSDP-sharded) axes where it is produced makes the partitioner reduce-scatter
    it there, instead of all-reducing the whole gradient and slicing it later.
    """
    return x


def _shard_gradient_fwd(x, axes):
    return x, None


def _shard_gradient_bwd(axes, _, g):
    return (constrain(g, axes),)


shard_gradient.defvjp(_shard_gradient_fwd, _shard_gradient_bwd)


@contextlib.contextmanager
def step_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """The mesh and logical axis rules a traced step runs under, entered inside the trace.

    ``jax.set_mesh`` cannot be entered inside ``jax.jit``; its abstract mesh can, and that is all
    :func:`constrain` and ``with_sharding_constraint`` need. A step whose traced body enters this
    compiles to the same executable whatever context its caller is in (or none).
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(tuple(rules)):
        yield


def in_step_context(fn: Callable, mesh: Mesh, rules: Rules) -> Callable:
    """``fn`` traced under :func:`step_context` (wrap a step's body before ``jax.jit``).

    Example:
        >>> from jaxslim.config import MeshConfig
        >>> mesh_cfg = MeshConfig(data=-1)
        >>> mesh = make_mesh(mesh_cfg)
        >>> f = jax.jit(in_step_context(lambda x: constrain(x, ("batch",)), mesh, mesh_cfg.rules))
        >>> f(jnp.ones(8)).shape
        (8,)
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with step_context(mesh, rules):
            return fn(*args, **kwargs)

    return wrapped


# -- the layer axis -------------------------------------------------------------------------------


def layer_axis(axes: Sequence[str | None] | None) -> int | None:
    """Index of the ``layers`` axis in a weight's logical axes, or None for an unstacked weight."""
    if not axes:
        return None
    axes = tuple(axes)
    return axes.index(LAYERS) if LAYERS in axes else None


def map_layers(fn: Callable[[jax.Array], Any], x: jax.Array, axes: Sequence[str | None] | None):
    """Applies ``fn`` to each layer's slice of ``x`` (vmapped over the ``layers`` axis if any).

    With no ``layers`` axis, ``fn(x)`` is returned unchanged; with one, the per-layer results are
    stacked on that axis, so ``map_layers(jnp.linalg.norm, w, axes)`` gives one norm per layer.
    """
    i = layer_axis(axes)
    if i is None:
        return fn(x)
    return jax.vmap(fn, in_axes=i, out_axes=0)(x)


def per_layer_reduce(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, axes: Sequence[str | None] | None
) -> jax.Array:
    """A per-layer reduction broadcast back to ``x``'s rank (for scaling each layer separately).

    ``fn`` maps one layer's slice to a scalar. The result has ``x``'s rank, with size ``L`` on the
    ``layers`` axis and 1 elsewhere (a plain scalar for an unstacked weight).
    """
    i = layer_axis(axes)
    if i is None:
        return fn(x)
    vals = jax.vmap(fn, in_axes=i)(x)
    shape = [1] * x.ndim
    shape[i] = x.shape[i]
    return jnp.reshape(vals, shape)


def split_layers(x: jax.Array, axes: Sequence[str | None] | None) -> list[jax.Array]:
    """The per-layer slices of a stacked weight (a one-element list for an unstacked one)."""
    i = layer_axis(axes)
    if i is None:
        return [x]
    return [jnp.take(x, j, axis=i) for j in range(x.shape[i])]
