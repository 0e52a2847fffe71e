"""Depth growth: new blocks inserted into the stack, identity-initialised or copied.

Staged training's released depth operator writes its "identity" tensors into the optimizer moments
instead of the weights, so it is not loss-preserving. Here the two modes are explicit:

- ``"identity"`` (exact): each new block is a copy of the block it follows with its residual
  outputs zeroed (attention ``wo``/``bo``, FFN or expert ``wo``/``bo``), so a pre-norm block adds
  nothing, ``x + 0 + 0 = x``, and the grown model's logits equal the small model's. Its other
  weights are the neighbour's, so the zeroed projections receive useful gradients at once. Post-norm
  models (BERT) have no identity block (their norm renormalises the residual) and refuse it.
- ``"copy"`` (stacking): each new block is a copy of its neighbour. Not loss-preserving: the
  grown network applies every copied block twice. Its promise is that the new blocks start from
  trained weights; it is exact for the blocks it leaves in place (their weights are unchanged).

Placement: ``"interleave"`` puts block i's new block right after it (i -> 2i, 2i + 1), ``"append"``
adds copies of the last ``n`` blocks after the stack.

Optimizer state (see :mod:`jaxslim.grow.state`): the blocks already there keep their moments. An
identity block adds nothing and its zeroed output projections pass no gradient back through it,
so the old blocks' gradients, and hence their first updates, are exactly the small model's; the new
blocks start with zero moments. Copy-mode new blocks take their source's moments (as in staged
training's released code), since they start as that block. Pruning masks are copied with the block.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig
    >>> from jaxslim.models import Transformer
    >>> small = Transformer(ModelConfig.llama(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32),
    ...                     rngs=nnx.Rngs(0))
    >>> deep = grow_depth(small)
    >>> t = jnp.ones((1, 5), jnp.int32)
    >>> deep.cfg.n_layers, bool(jnp.allclose(deep(t).logits, small(t).logits, atol=1e-5))
    (4, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxslim.config import ModelConfig
from jaxslim.grow.tree import Kind, grow_model
from jaxslim.models.stack import layer_trees, stack_trees

_OUTPUTS = {"attn": ("wo", "bo"), "mlp": ("wo", "bo"), "moe": ("wo", "bo")}
MODES = ("identity", "copy")
PLACEMENTS = ("interleave", "append")


def deepen_plan(n_layers: int, placement: str, n_new: int | None = None) -> list[tuple[int, bool]]:
    """The grown stack as ``(source layer, is_new)`` per position.

    ``interleave`` doubles the stack (each layer followed by its new block); ``append`` adds
    ``n_new`` (default ``n_layers``) new blocks, copies of the last ``n_new`` layers in order.
    """
    if placement == "interleave":
        if n_new not in (None, n_layers):
            raise ValueError(
                f"interleaved depth growth doubles the stack; n_new must be {n_layers}, got {n_new}"
            )
        return [(i, new) for i in range(n_layers) for new in (False, True)]
    if placement == "append":
        n_new = n_layers if n_new is None else n_new
        if not (isinstance(n_new, int) and 1 <= n_new <= n_layers):
            raise ValueError(f"appended depth growth adds 1..{n_layers} blocks, got n_new={n_new!r}")
        return [(i, False) for i in range(n_layers)] + [(i, True) for i in range(n_layers - n_new, n_layers)]
    raise ValueError(f"depth growth placement must be 'interleave' or 'append', got {placement!r}")


def _silenced(tree: dict) -> dict:
    tree = dict(tree)
    for part, names in _OUTPUTS.items():
        if part in tree and tree[part] is not None:
            tree[part] = {k: (jnp.zeros_like(v) if k in names else v) for k, v in tree[part].items()}
    return tree


@dataclass(frozen=True)
class Deepen:
    """Depth growth as a growth operator (:mod:`jaxslim.grow.state`).

    Attributes:
        mode: ``"identity"`` (exactly loss-preserving, pre-norm models) or ``"copy"`` (stacking).
        placement: ``"interleave"`` or ``"append"`` (see :func:`deepen_plan`).
        n_new: blocks appended (``placement="append"`` only; default: as many as there are).
    """

    mode: str = "identity"
    placement: str = "interleave"
    n_new: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"depth growth mode must be 'identity' or 'copy', got {self.mode!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"depth growth placement must be 'interleave' or 'append', got {self.placement!r}"
            )

    def config(self, cfg: ModelConfig) -> ModelConfig:
        if self.mode == "identity" and not cfg.pre_norm:
            raise ValueError(
                f"identity depth growth needs a pre-norm model; arch={cfg.arch!r} normalises after the "
                "residual add, so no block is an identity (use mode='copy')"
            )
        if cfg.moe is not None:
            raise ValueError(
                "depth growth of a mixture of experts is not supported (its expert layers would move)"
            )
        if not cfg.uniform:
            raise ValueError("depth growth of a slimmed model with per-layer widths is not supported")
        return cfg.replace(n_layers=len(deepen_plan(cfg.n_layers, self.placement, self.n_new)))

    def apply(self, cfg: ModelConfig, tree: dict, axes: dict, kind: Kind) -> dict:
        """Inserts the new blocks into a params-shaped nested dict (weights, moments or masks)."""

        new_cfg = self.config(cfg)
        if "stack" not in tree or "blocks" not in tree["stack"]:
            return tree  # a partial tree without blocks (e.g. masks of the embeddings only)
        layers = layer_trees(cfg, tree["stack"]["blocks"])
        out = []
        for src, new in deepen_plan(cfg.n_layers, self.placement, self.n_new):
            layer = jax.tree.map(jnp.asarray, layers[src])
            if new and self.mode == "identity":
                if kind == "param":
                    layer = _silenced(layer)
                elif kind != "mask":
                    layer = jax.tree.map(jnp.zeros_like, layer)
            out.append(layer)
        stack = dict(tree["stack"], blocks=stack_trees(new_cfg, out))
        return dict(tree, stack=stack)


def grow_depth(model, *, mode: str = "identity", placement: str = "interleave", n_new: int | None = None):
    """A deeper copy of ``model`` (scanned or not; same layout).

    Args:
        mode: ``"identity"`` (exactly loss-preserving, pre-norm models) or ``"copy"`` (stacking).
        placement: ``"interleave"`` or ``"append"`` (see :func:`deepen_plan`).
        n_new: blocks appended (``placement="append"`` only; default: as many as there are).

    Raises:
        ValueError: an unknown mode or placement, identity growth of a post-norm (BERT) model, a
            mixture of experts (its expert placement would shift), or per-layer widths.
    """
    return grow_model(model, Deepen(mode, placement, n_new))
