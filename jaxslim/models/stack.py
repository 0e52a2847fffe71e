"""The stack of blocks, scanned (weights on a leading ``layers`` axis) or unscanned.

A scanned stack holds one group of ``cfg.layer_period`` blocks whose every variable has a leading
``layers`` axis (one entry per group) and runs it with ``jax.lax.scan``: one compiled group,
whatever the depth. The period is 1 for dense models (the group is a single :class:`Block`) and
``moe.every`` for mixtures of experts, whose dense and expert blocks differ (the group is an
``nnx.List`` of blocks). An unscanned stack is an ``nnx.List`` of blocks, which is what slimmed
models with per-layer widths need. :func:`layer_trees` / :func:`stack_trees` convert between
per-layer parameter trees and either layout; :func:`stack_layers` and :func:`unstack_layers` convert
whole models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxslim.config import ModelConfig
from jaxslim.models.block import Block
from jaxslim.sharding import LAYERS

if TYPE_CHECKING:  # annotations only: transformer.py imports this module
    from jaxslim.models.transformer import Transformer


def _add_layer_axis(var: nnx.Variable) -> nnx.Variable:
    axes = var.get_metadata().get("out_sharding")
    if axes:
        var.set_metadata(out_sharding=(LAYERS, *axes))
    return var


def _group(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.layer_period == 1:
        return Block(cfg, rngs=rngs)
    return nnx.List([Block(cfg, j, rngs=rngs) for j in range(cfg.layer_period)])


def _scanned_group(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    keys = jax.random.split(rngs.params(), cfg.n_layers // cfg.layer_period)
    graphdef = nnx.split(nnx.eval_shape(lambda: _group(cfg, nnx.Rngs(0))))[0]
    state = jax.vmap(lambda k: nnx.split(_group(cfg, nnx.Rngs(params=k)))[1])(keys)
    state = jax.tree.map(_add_layer_axis, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


# names of the activations attention and the MLP tag with jax.ad_checkpoint.checkpoint_name
QKV_NAMES = ("query_proj", "key_proj", "value_proj")
OUT_NAMES = ("out_proj",)
MLP_OUT_NAMES = ("mlpwo",)
# each block's input (the residual stream a scanned stack saves per layer), tagged in _run_block
LAYER_INPUT_NAMES = ("decoder_layer_input",)


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy called ``name`` (:attr:`~jaxslim.config.ModelConfig.remat_policy`)."""
    cp = jax.checkpoint_policies
    policies = {
        "full": cp.nothing_saveable,
        "none": cp.everything_saveable,
        "save_dots": cp.checkpoint_dots,
        "dots_with_no_batch_dims": cp.dots_with_no_batch_dims_saveable,
        "save_qkv_proj": cp.save_only_these_names(*QKV_NAMES),
        "save_out_proj": cp.save_only_these_names(*OUT_NAMES),
        "save_qkv_out_proj": cp.save_only_these_names(*QKV_NAMES, *OUT_NAMES),
        "save_dot_except_mlpwi": cp.save_only_these_names(*QKV_NAMES, *OUT_NAMES, *MLP_OUT_NAMES),
    }
    offloaded = {
        "offload": [*LAYER_INPUT_NAMES, *QKV_NAMES, *OUT_NAMES],
        "qkv_proj_offloaded": list(QKV_NAMES),
    }
    if name in offloaded:
        return cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[],
            names_which_can_be_offloaded=offloaded[name],
            offload_src="device",
            offload_dst="pinned_host",
        )
    if name not in policies:
        raise ValueError(f"remat_policy must be one of {(*policies, *offloaded)}, got {name!r}")
    return policies[name]


def _layer_mask(mask: Any, i: int):
    return None if mask is None else mask[i]


def _layer_rng(rng: jax.Array | None, i):
    return None if rng is None else jax.random.fold_in(rng, i)


def _stack_metrics(metrics: list) -> dict | None:
    metrics = [m for m in metrics if m is not None]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *metrics) if metrics else None


class Stack(nnx.Module):
    """``cfg.n_layers`` blocks; ``head_mask`` / ``neuron_mask`` are ``[layers, width]``.

    For a slimmed (unscanned, per-layer width) stack the masks may also be sequences of per-layer
    vectors. Calling it returns ``(x, moe_metrics)``: the expert layers' metrics stacked on a
    leading axis (one entry per expert layer, in depth order), or None for a dense model.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.scanned = cfg.scan_layers
        self.remat = cfg.remat and cfg.remat_policy != "none"
        self.remat_policy = cfg.remat_policy
        self.period = cfg.layer_period
        # per-layer sliding windows, passed to the scanned blocks (an unscanned block keeps its own)
        self.windows = (
            None if cfg.sliding_window is None else tuple(cfg.window_of(i) for i in range(cfg.n_layers))
        )
        if cfg.scan_layers:
            self.blocks = _scanned_group(cfg, rngs)
        else:
            self.blocks = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])

    def __call__(self, x, *, mask, rope=None, head_mask=None, neuron_mask=None, rng=None):
        remat = lambda f: jax.checkpoint(f, policy=remat_policy(self.remat_policy))  # noqa: E731
        run = remat(_run_block) if self.remat and not self.scanned else _run_block
        if not self.scanned:
            metrics = []
            for i, block in enumerate(self.blocks):
                hm, nm = _layer_mask(head_mask, i), _layer_mask(neuron_mask, i)
                x, aux = run(block, x, mask, rope, hm, nm, _layer_rng(rng, i))
                metrics.append(aux)
            return x, _stack_metrics(metrics)
        graphdef, state = nnx.split(self.blocks)
        p = self.period
        groups = jax.tree.leaves(state)[0].shape[0]

        def per_group(m):
            return None if m is None else m.reshape((groups, p) + m.shape[1:])

        def body(h, xs):
            group_state, hm, nm, g, win = xs
            group = nnx.merge(graphdef, group_state)
            blocks = [group] if p == 1 else list(group)
            metrics = []
            for j, block in enumerate(blocks):
                h, aux = _run_block(
                    block,
                    h,
                    mask,
                    rope,
                    _layer_mask(hm, j),
                    _layer_mask(nm, j),
                    _layer_rng(rng, g * p + j),
                    _layer_mask(win, j),
                    g * p + j,
                )
                metrics.append(aux)
            return h, _stack_metrics(metrics)

        if self.remat:
            body = remat(body)
        windows = None if self.windows is None else per_group(jnp.asarray(self.windows, jnp.int32))
        xs = (state, per_group(head_mask), per_group(neuron_mask), jnp.arange(groups), windows)
        x, metrics = jax.lax.scan(body, x, xs)
        if metrics is not None:  # [groups, expert layers per group, ...] -> [expert layers, ...]
            metrics = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), metrics)
        return x, metrics


def _run_block(block, x, mask, rope, head_mask, neuron_mask, rng, window=None, layer=None):
    x = checkpoint_name(x, LAYER_INPUT_NAMES[0])  # what the "offload" remat policy moves to host
    return block(
        x,
        mask=mask,
        rope=rope,
        head_mask=head_mask,
        neuron_mask=neuron_mask,
        rng=rng,
        window=window,
        layer=layer,
    )


def layer_trees(cfg: ModelConfig, blocks: Any) -> list[Any]:
    """Per-layer parameter trees (pure dicts) from the ``stack.blocks`` tree of either layout."""
    if not cfg.scan_layers:
        return [blocks[i] for i in range(cfg.n_layers)]
    p = cfg.layer_period
    if p == 1:
        return [jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(cfg.n_layers)]
    return [jax.tree.map(lambda a, i=i: a[i // p], blocks[i % p]) for i in range(cfg.n_layers)]


def stack_trees(cfg: ModelConfig, layers: list[Any]) -> Any:
    """The ``stack.blocks`` tree of ``cfg``'s layout from per-layer trees: the inverse of
    :func:`layer_trees`."""
    if not cfg.scan_layers:
        return dict(enumerate(layers))
    p = cfg.layer_period
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    if p == 1:
        return stack(layers)
    return {j: stack(layers[j::p]) for j in range(p)}


def unstack_layers(model: Transformer) -> Transformer:
    """A copy of a scanned model with an unscanned stack (same weights, same outputs)."""
    return _relayout(model, scan=False)


def stack_layers(model: Transformer) -> Transformer:
    """A copy of an unscanned, uniform-width model with a scanned stack."""
    return _relayout(model, scan=True)


def _relayout(model: Transformer, *, scan: bool) -> Transformer:
    cfg = model.cfg
    if cfg.scan_layers == scan:
        raise ValueError(f"model already has scan_layers={scan}")
    new_cfg = cfg.replace(scan_layers=scan)  # validates: per-layer widths cannot be scanned
    return rebuild(model, new_cfg, lambda pure: pure)


def rebuild(model: Transformer, new_cfg: ModelConfig, edit_layers) -> Transformer:
    """A model of ``new_cfg`` holding ``model``'s weights, each layer's tree passed through
    ``edit_layers(list of per-layer trees) -> list`` on the way (layouts converted as needed)."""
    target = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, target_state = nnx.split(target)
    pure = nnx.to_pure_dict(nnx.state(model))
    layers = edit_layers(layer_trees(model.cfg, pure["stack"]["blocks"]))
    pure["stack"]["blocks"] = stack_trees(new_cfg, layers)
    nnx.replace_by_pure_dict(target_state, pure)
    return nnx.merge(graphdef, target_state)
