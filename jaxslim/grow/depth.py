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

import jax
import jax.numpy as jnp

from jaxslim.config import ModelConfig

_OUTPUTS = {"attn": ("wo", "bo"), "mlp": ("wo", "bo"), "moe": ("wo", "bo")}


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
    from jaxslim.models.stack import rebuild

    cfg: ModelConfig = model.cfg
    if mode not in ("identity", "copy"):
        raise ValueError(f"depth growth mode must be 'identity' or 'copy', got {mode!r}")
    if mode == "identity" and not cfg.pre_norm:
        raise ValueError(
            f"identity depth growth needs a pre-norm model; arch={cfg.arch!r} normalises after the residual "
            "add, so no block is an identity (use mode='copy')"
        )
    if cfg.moe is not None:
        raise ValueError(
            "depth growth of a mixture of experts is not supported (its expert layers would move)"
        )
    if not cfg.uniform:
        raise ValueError("depth growth of a slimmed model with per-layer widths is not supported")
    plan = deepen_plan(cfg.n_layers, placement, n_new)
    new_cfg = cfg.replace(n_layers=len(plan))

    def edit(layers):
        out = []
        for src, new in plan:
            tree = jax.tree.map(jnp.asarray, layers[src])
            out.append(_silenced(tree) if new and mode == "identity" else tree)
        return out

    return rebuild(model, new_cfg, edit)
