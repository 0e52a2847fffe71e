"""The mixture-of-experts FFN layer: a router, experts stacked on a leading ``exp`` axis, dispatch.

One layer covers the three regimes of :class:`~jaxslim.config.MoeConfig`: top-k token choice with
capacity, dropless top-k, and THOR's stochastic experts. It returns its output and a metrics dict
(see :func:`~jaxslim.moe.losses.routing_metrics`) that the stack gathers per layer.

Training vs inference follows Flax's convention: ``model.eval()`` sets ``deterministic=True``
(eval capacity factor, no jitter or dropout, THOR's ``eval_mode``), ``model.train()`` clears it.
Randomness comes from the ``rng`` argument (a per-layer key the stack derives from the one given
to the model), so the train step stays a pure function of its state.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxslim.config import ModelConfig, MoeConfig
    >>> cfg = ModelConfig.llama(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32,
    ...                         moe=MoeConfig(num_experts=4, top_k=2, dispatch="dropless"))
    >>> layer = MoeLayer(cfg, rngs=nnx.Rngs(0))
    >>> y, metrics = layer(jnp.ones((2, 5, 16)))
    >>> y.shape, metrics["load"].shape
    ((2, 5, 16), (4,))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.config import ModelConfig
from jaxslim.models.layers import activation, dtypes, param
from jaxslim.moe.dispatch import ExpertWeights, capacity_moe, dropless_moe, expert_capacity, expert_ffn
from jaxslim.moe.losses import routing_metrics
from jaxslim.moe.routing import Routing, priority_order, random_routing, top_k_routing
from jaxslim.sharding import constrain

_RANDOM_PER = {
    "token": "token",
    "sequence": "sequence",
    "random_token": "token",
    "random_sequence": "sequence",
}


class MoeLayer(nnx.Module):
    """``num_experts`` FFNs of width ``cfg.expert_ffn`` behind the router ``cfg.moe.router``.

    Weights: ``router [d, E]`` (stored in ``param_dtype``, applied in float32), ``wi`` (and ``wu``
    for SwiGLU) ``[E, d, f]``, ``wo [E, f, d]``, biases ``[E, f]`` / ``[E, d]`` when the model has
    FFN biases. The ``exp`` axis maps to the ``expert`` mesh axis.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.moe is None:
            raise ValueError("MoeLayer needs a ModelConfig with moe set")
        _, pdt = dtypes(cfg)
        m = cfg.moe
        e, d, f = m.num_experts, cfg.d_model, cfg.expert_ffn
        self.mcfg = m
        self.act = cfg.activation
        self.deterministic = False
        self.router = param(rngs, (d, e), ("embed", None), pdt) if m.router == "topk" else None
        self.wi = param(rngs, (e, d, f), ("exp", "embed", "mlp"), pdt)
        self.wu = param(rngs, (e, d, f), ("exp", "embed", "mlp"), pdt) if cfg.gated_mlp else None
        self.wo = param(rngs, (e, f, d), ("exp", "mlp", "embed"), pdt)
        if cfg.mlp_bias:
            self.bi = param(None, (e, f), ("exp", "mlp"), pdt, "zeros")
            self.bu = param(None, (e, f), ("exp", "mlp"), pdt, "zeros") if cfg.gated_mlp else None
            self.bo = param(None, (e, d), ("exp", "embed"), pdt, "zeros")
        else:
            self.bi = self.bu = self.bo = None

    def weights(self, dtype) -> ExpertWeights:
        """The expert weights cast to ``dtype``."""
        get = lambda v: None if v is None else v[...].astype(dtype)  # noqa: E731
        return ExpertWeights(
            get(self.wi), get(self.wo), get(self.wu), get(self.bi), get(self.bu), get(self.bo)
        )

    def _mode(self) -> str:
        m = self.mcfg
        if m.router == "topk":
            return "topk"
        return m.eval_mode if self.deterministic else m.granularity

    def _needs_rng(self, mode: str) -> bool:
        train = not self.deterministic
        return mode not in ("topk", "fixed", "mean") or (
            train and bool(self.mcfg.jitter or self.mcfg.expert_dropout)
        )

    def __call__(self, x: jax.Array, *, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Applies the layer to ``x: [batch, length, d]``; returns ``(y, metrics)``.

        Args:
            rng: PRNG key for THOR's draws, router jitter and expert dropout. Required in training
                when one of them is on; in evaluation a missing key means a fixed one (key 0).
        """
        m = self.mcfg
        e = m.num_experts
        mode = self._mode()
        if self._needs_rng(mode) and rng is None:
            if not self.deterministic:
                raise ValueError(
                    f"the MoE layer (router={m.router!r}, jitter={m.jitter}, expert_dropout={m.expert_dropout}) "
                    "draws random numbers in training: pass rng=... to the model (or call model.eval())"
                )
            rng = jax.random.key(0)
        route_key, jitter_key, drop_key = jax.random.split(rng, 3) if rng is not None else (None,) * 3
        w = self.weights(x.dtype)
        hidden = self._hidden(drop_key)

        if mode in ("batch", "fixed", "sequence", "random_sequence"):
            # one expert for the batch or for each sequence: gather its weights and run it densely
            # (a sequence's tokens would all crowd one expert's buffer under capacity dispatch)
            if mode == "fixed":
                idx = jnp.full((1,), m.eval_expert, jnp.int32)
            else:
                idx = random_routing(
                    route_key, x.shape[:2], e, per="batch" if mode == "batch" else "sequence"
                )
                idx = idx.experts[:, 0, 0] if mode != "batch" else idx.experts[:1, 0, 0]
            xs = x[None] if idx.shape[0] == 1 else x[:, None]
            y = expert_ffn(xs, w.take(idx), hidden)
            y = y[0] if idx.shape[0] == 1 else y[:, 0]
            routing = Routing(
                jnp.broadcast_to(idx[:, None, None], x.shape[:2] + (1,)), jnp.ones(x.shape[:2] + (1,))
            )
            return y, routing_metrics(routing, jnp.ones((), bool), e)
        if mode == "mean":
            y = jnp.mean(expert_ffn(jnp.broadcast_to(x, (e, *x.shape)), w, hidden), axis=0)
            routing = Routing(
                jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (1, 1, e)), jnp.ones((1, 1, e))
            )
            return y, routing_metrics(routing, jnp.ones((), bool), e)

        b, t, d = x.shape
        s = m.group_size or t
        if (b * t) % s:
            raise ValueError(f"MoeConfig.group_size={s} must divide the {b * t} tokens of a [{b}, {t}] batch")
        xg = constrain(x.reshape(b * t // s, s, d), ("batch", None, "act_embed"))
        if mode == "topk":
            jitter = 0.0 if self.deterministic else m.jitter
            routing = top_k_routing(
                xg, self.router[...], k=m.top_k, renormalize=m.renormalize, jitter=jitter, rng=jitter_key
            )
        else:
            r = random_routing(route_key, (b, t), e, per=_RANDOM_PER[mode])
            routing = Routing(r.experts.reshape(-1, s, 1), r.gates.reshape(-1, s, 1))
        if m.dispatch == "dropless":
            y, kept = dropless_moe(xg, routing, w, hidden), jnp.ones((), bool)
        else:
            cf = m.eval_capacity_factor if self.deterministic else m.train_capacity_factor
            capacity = expert_capacity(s, e, cf, m.min_capacity)
            order = priority_order(routing) if m.batch_prioritized and mode == "topk" else None
            y, kept = capacity_moe(xg, routing, w, hidden, capacity, order=order)
        y = constrain(y.reshape(b, t, d), ("batch", "length", "act_embed"))
        return y, routing_metrics(routing, kept, e)

    def _hidden(self, drop_key):
        act = activation(self.act)
        rate = 0.0 if self.deterministic else self.mcfg.expert_dropout
        if not rate:
            return act

        def hidden(h):
            keep = jax.random.bernoulli(drop_key, 1.0 - rate, h.shape)
            return jnp.where(keep, act(h) / (1.0 - rate), 0.0).astype(h.dtype)

        return hidden


def check_expert_mesh(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> None:
    """Raises a ``ValueError`` when ``mesh``'s ``expert`` axis does not divide the experts (the
    expert weights would silently be replicated instead of sharded)."""
    size = dict(mesh.shape).get("expert", 1)
    if cfg.moe is not None and cfg.moe.num_experts % size:
        raise ValueError(
            f"the mesh's expert axis ({size} devices) must divide MoeConfig.num_experts="
            f"{cfg.moe.num_experts}; pick an expert axis size among its divisors"
        )
