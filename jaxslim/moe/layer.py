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
    >>> from jaxslim.config import Activation, ModelConfig, MoeConfig
    >>> cfg = ModelConfig.llama(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32,
    ...                         moe=MoeConfig(num_experts=4, top_k=2, dispatch="dropless"))
    >>> layer = MoeLayer(cfg, rngs=nnx.Rngs(0))
    >>> y, metrics = layer(jnp.ones((2, 5, 16)))
    >>> y.shape, metrics["load"].shape
    ((2, 5, 16), (4,))

    Stand-alone, in a model of one's own (no whole-model config):

    >>> ffn = MoeLayer(MoeConfig(num_experts=4, top_k=2), d_model=16, d_ff=32, rngs=nnx.Rngs(0))
    >>> ffn(jnp.ones((2, 5, 16)))[0].shape
    (2, 5, 16)
"""

from __future__ import annotations

from typing import get_args

import jax
import jax.numpy as jnp
from flax import nnx

from jaxslim.config import Activation, ModelConfig, MoeConfig
from jaxslim.moe.dispatch import ExpertWeights, capacity_moe, dropless_moe, expert_capacity, expert_ffn
from jaxslim.moe.losses import routing_metrics
from jaxslim.moe.routing import Routing, priority_order, random_routing, top_k_routing
from jaxslim.nn import activation as activation_fn
from jaxslim.nn import dtypes, param
from jaxslim.sharding import constrain

ACTIVATIONS = get_args(Activation)
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

    def __init__(
        self,
        cfg: ModelConfig | MoeConfig,
        *,
        d_model: int | None = None,
        d_ff: int | None = None,
        activation: str = "gelu",
        gated: bool = False,
        bias: bool = False,
        param_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        """Builds the layer from a model's config, or stand-alone from a :class:`MoeConfig`.

        Args:
            cfg: a :class:`ModelConfig` with ``moe`` set (the model's widths, activation, gating,
                biases and dtypes apply), or a :class:`MoeConfig` for a layer on its own.
            d_model, d_ff: with a ``MoeConfig``: the model width (required) and the expert width
                (default ``cfg.d_ff``; one of them must be given).
            activation, gated, bias, param_dtype: with a ``MoeConfig``: the FFN activation
                (``"gelu"``, ``"gelu_tanh"``, ``"relu"``, ``"silu"``), SwiGLU-style gating, FFN
                biases, and the parameter dtype.
            rngs: the parameter initialisers' keys.

        Raises:
            ValueError: a ``ModelConfig`` without ``moe``, or with ``d_model`` / ``d_ff`` that
                contradict it; a ``MoeConfig`` without ``d_model`` or an expert width, or with an
                unknown activation.
        """
        if isinstance(cfg, ModelConfig):
            if cfg.moe is None:
                raise ValueError("MoeLayer needs a ModelConfig with moe set (or a MoeConfig)")
            for name, given, have in (("d_model", d_model, cfg.d_model), ("d_ff", d_ff, cfg.expert_ffn)):
                if given is not None and given != have:
                    raise ValueError(f"MoeLayer: {name}={given} contradicts the ModelConfig's {have}")
            _, pdt = dtypes(cfg)
            m, d, f = cfg.moe, cfg.d_model, cfg.expert_ffn
            act: str = cfg.activation
            gated, bias = cfg.gated_mlp, cfg.mlp_bias
        elif isinstance(cfg, MoeConfig):
            width = cfg.d_ff if cfg.d_ff else d_ff
            if cfg.d_ff and d_ff is not None and d_ff != cfg.d_ff:
                raise ValueError(f"MoeLayer: d_ff={d_ff} contradicts MoeConfig.d_ff={cfg.d_ff}")
            for name, v in (("d_model", d_model), ("d_ff (or MoeConfig.d_ff)", width)):
                if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                    raise ValueError(f"a stand-alone MoeLayer needs {name} as a positive integer, got {v!r}")
            if activation not in ACTIVATIONS:
                raise ValueError(f"MoeLayer activation must be one of {ACTIVATIONS}, got {activation!r}")
            assert d_model is not None and width is not None  # both checked just above
            m, d, f, act, pdt = cfg, d_model, width, activation, jnp.dtype(param_dtype)
        else:
            raise TypeError(f"MoeLayer needs a ModelConfig or a MoeConfig, got {type(cfg).__name__}")
        e = m.num_experts
        self.mcfg = m
        self.act = act
        self.deterministic = False
        self.router = param(rngs, (d, e), ("embed", None), pdt) if m.router == "topk" else None
        self.wi = param(rngs, (e, d, f), ("exp", "embed", "mlp"), pdt)
        self.wu = param(rngs, (e, d, f), ("exp", "embed", "mlp"), pdt) if gated else None
        self.wo = param(rngs, (e, f, d), ("exp", "mlp", "embed"), pdt)
        if bias:
            self.bi: nnx.Param | None = param(None, (e, f), ("exp", "mlp"), pdt, "zeros")
            self.bu: nnx.Param | None = param(None, (e, f), ("exp", "mlp"), pdt, "zeros") if gated else None
            self.bo: nnx.Param | None = param(None, (e, d), ("exp", "embed"), pdt, "zeros")
        else:
            self.bi = self.bu = self.bo = None

    def weights(self, dtype) -> ExpertWeights:
        """The expert weights cast to ``dtype``."""
        get = lambda v: None if v is None else v[...].astype(dtype)  # noqa: E731
        return ExpertWeights(
            self.wi[...].astype(dtype),
            self.wo[...].astype(dtype),
            get(self.wu),
            get(self.bi),
            get(self.bu),
            get(self.bo),
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
                assert route_key is not None  # _needs_rng: random modes always have a key
                drawn = random_routing(
                    route_key, (x.shape[0], x.shape[1]), e, per="batch" if mode == "batch" else "sequence"
                )
                idx = drawn.experts[:, 0, 0] if mode != "batch" else drawn.experts[:1, 0, 0]
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
            assert self.router is not None  # built exactly when the router is "topk"
            jitter = 0.0 if self.deterministic else m.jitter
            routing = top_k_routing(
                xg, self.router[...], k=m.top_k, renormalize=m.renormalize, jitter=jitter, rng=jitter_key
            )
        else:
            assert route_key is not None  # _needs_rng: random modes always have a key
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
        act = activation_fn(self.act)
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
