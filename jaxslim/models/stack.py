"""The stack of blocks, scanned (weights on a leading ``layers`` axis) or unscanned.

A scanned stack holds one :class:`Block` whose every variable has a leading ``layers`` axis and runs
it with ``jax.lax.scan``: one compiled block, whatever the depth. An unscanned stack is an
``nnx.List`` of blocks, which is what slimmed models with per-layer widths need.
:func:`stack_layers` and :func:`unstack_layers` convert between the two layouts.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.block import Block
from jaxslim.sharding import LAYERS


def _add_layer_axis(var: nnx.Variable) -> nnx.Variable:
    axes = var.get_metadata().get("out_sharding")
    if axes:
        var.set_metadata(out_sharding=(LAYERS, *axes))
    return var


def _scanned_block(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    keys = jax.random.split(rngs.params(), cfg.n_layers)
    graphdef = nnx.split(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))[0]
    state = jax.vmap(lambda k: nnx.split(Block(cfg, rngs=nnx.Rngs(params=k)))[1])(keys)
    state = jax.tree.map(_add_layer_axis, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def _layer_mask(mask: Any, i: int):
    return None if mask is None else mask[i]


class Stack(nnx.Module):
    """``cfg.n_layers`` blocks; ``head_mask`` / ``neuron_mask`` are ``[layers, width]``.

    For a slimmed (unscanned, per-layer width) stack the masks may also be sequences of per-layer
    vectors.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scanned = cfg.scan_layers
        self.remat = cfg.remat
        if cfg.scan_layers:
            self.blocks = _scanned_block(cfg, rngs)
        else:
            self.blocks = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])

    def __call__(self, x, *, mask, rope=None, head_mask=None, neuron_mask=None) -> jax.Array:
        if not self.scanned:
            for i, block in enumerate(self.blocks):
                run = jax.checkpoint(_run_block) if self.remat else _run_block
                x = run(block, x, mask, rope, _layer_mask(head_mask, i), _layer_mask(neuron_mask, i))
            return x
        graphdef, state = nnx.split(self.blocks)

        def body(h, xs):
            layer_state, hm, nm = xs
            return _run_block(nnx.merge(graphdef, layer_state), h, mask, rope, hm, nm), None

        if self.remat:
            body = jax.checkpoint(body)
        x, _ = jax.lax.scan(body, x, (state, head_mask, neuron_mask))
        return x


def _run_block(block, x, mask, rope, head_mask, neuron_mask):
    return block(x, mask=mask, rope=rope, head_mask=head_mask, neuron_mask=neuron_mask)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of a scanned model with an unscanned stack (same weights, same outputs)."""
    return _relayout(model, scan=False)


def stack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of an unscanned, uniform-width model with a scanned stack."""
    return _relayout(model, scan=True)


def _relayout(model: nnx.Module, *, scan: bool) -> nnx.Module:
    cfg: ModelConfig = model.cfg
    if cfg.scan_layers == scan:
        raise ValueError(f"model already has scan_layers={scan}")
    new_cfg = cfg.replace(scan_layers=scan)  # validates: per-layer widths cannot be scanned
    target = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, target_state = nnx.split(target)
    pure = nnx.to_pure_dict(nnx.state(model))
    blocks = pure["stack"]["blocks"]
    if scan:
        layers = [blocks[i] for i in range(cfg.n_layers)]
        pure["stack"]["blocks"] = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *layers)
    else:
        pure["stack"]["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(cfg.n_layers)}
    nnx.replace_by_pure_dict(target_state, pure)
    return nnx.merge(graphdef, target_state)
