"""MoE layer throughput, forward+backward: capacity einsum vs dropless vs a dense FFN; THOR's two views.

Every row times ``jax.jit(jax.value_and_grad(loss, argnums=(params, x)))`` of one layer, where the
layer is rebuilt inside the jitted function with ``nnx.merge`` from the ``nnx.Param`` slice of
``nnx.split`` (as the training step does) and the gradient is taken with respect to the params and
the input ``x: [batch, length, d_model]``. ``loss = mean(y ** 2)`` in float32; top-k MoE rows add
the router losses the training step adds (``aux_loss_coef * aux_loss + z_loss_coef * z_loss``,
the ``MoeConfig`` defaults 0.01 and 0).

Section ``topk`` (learned token-choice routing, one view):

* ``dense f=k*F``: ``jaxslim.models.mlp.Mlp`` with hidden width ``k * F`` (``F`` = one expert's
  width, ``--d-ff``): the same active parameters and FLOPs per token as a top-k MoE layer. It is the
  baseline of the MoE rows with that ``k``.
* ``capacity``: ``MoeLayer`` with ``dispatch="capacity"`` (one-hot dispatch/combine einsums into
  ``[groups, experts, capacity, d]`` buffers) at the train capacity factor ``--cf`` (1.25), and at
  ``--cf-extra`` (2.0) for the middle expert count. ``dropped`` is ``metrics["dropped"]``: the
  fraction of expert choices over capacity (capacity is ``cf * group_size / E`` slots per expert,
  not multiplied by ``k``, so top-2 at cf 1.25 drops at least 37.5 % of the choices).
* ``dropless``: ``dispatch="dropless"``: tokens sorted by expert, ``jax.lax.ragged_dot``.

Section ``thor`` (THOR's consistency training, two views of each batch): the baseline is the dense
FFN of one expert's width run on both views, timed two ways, ``dense x2 (vmap)`` (a leading view
axis of 2 through ``jax.vmap``) and ``dense x2 (two calls)``; the cheaper of the two (by median) is
the baseline and the table says which. The MoE rows are ``router="stochastic"`` layers run through
``jax.vmap`` over the two views and two independent PRNG keys, as
``jaxslim.moe.thor.consistency_objective`` does: ``granularity="batch"`` (THOR's reference: one
expert for the whole batch) and ``"sequence"`` (one per sequence), both without dispatch, and
``"token"`` with capacity dispatch (at ``--cf``) and dropless dispatch. THOR's goal is <= 1.1x the dense pair. ``jax.vmap`` of
``jax.lax.ragged_dot`` raises ``NotImplementedError`` in jax 0.10.2; a row whose vmap fails to
compile is run with the two views folded into one batch of ``2 * B`` sequences and one key instead
(for per-sequence and per-token draws that is the same distribution) and is labelled so.
The two views get different inputs (in training, dropout makes them differ; identical inputs would
also let XLA merge the dense pair into a single pass). ``--alpha A`` adds
``A * symmetric_kl(y1, y2)`` (the consistency term, here over the layer outputs as logits) to the
MoE rows' loss; the default 0 times the layer alone.

The variants are compiled and warmed up first, then timed in ``--repeats`` rounds, each round
running every variant ``--inner`` times in a shuffled order (seeded). Reported per variant: median
and min ms per forward+backward over the rounds, the ratio of medians to the baseline and the
median of the per-round paired ratios, batch tokens per second and compile time.

Usage::

    python benchmarks/moe_layer.py                       # CPU defaults: 8 x 256 tokens, d 256, F 512
    python benchmarks/moe_layer.py --quick               # smoke run: tiny shapes, 3 rounds
    python benchmarks/moe_layer.py --experts 8 64 --top-k 2 --tokens 16 1024 --d-model 1024 \\
        --d-ff 2816 --arch llama --dtype bfloat16        # a GPU-sized run
    python benchmarks/moe_layer.py --sections thor --alpha 5

Results go to ``benchmarks/results/moe_layer.json`` (``--quick``: ``moe_layer_quick.json``).
On a CPU, ``jax.lax.ragged_dot`` has no grouped kernel: it lowers to a dense product over all
experts with the rows of the other experts masked to zero (``E`` times the FLOPs), so dropless rows
grow with ``E`` there; on a GPU the JSON records which ``ragged_dot`` lowering flags were set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Variant:
    """One timed row: a compiled step and what it measures."""

    name: str
    section: str  # "topk" or "thor"
    kind: str  # "dense", "topk" or "stochastic"
    dispatch: str | None  # "capacity", "dropless" or None (dense, THOR's one expert per batch)
    experts: int | None
    top_k: int | None
    cf: float | None
    params: int
    baseline: str | None = None  # name of the variant the ratio is taken against
    views: str | None = None  # THOR rows: how the two views run
    step: Callable[[int], Any] | None = None
    compile_s: float = 0.0
    dropped: float | None = None
    times: list[float] = dataclasses.field(default_factory=list)


def _model_cfg(args, *, d_ff: int, moe=None):
    from jaxslim.config import ModelConfig

    make = ModelConfig.gpt2 if args.arch == "gpt2" else ModelConfig.llama
    # n_layers=2 with MoeConfig.every=2 makes the (unused) stack layout valid; the layer is built alone
    return make(
        vocab_size=128,
        d_model=args.d_model,
        n_layers=2,
        n_heads=1,
        d_ff=d_ff,
        dtype=args.dtype,
        moe=moe,
    )


def _count(tree) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(tree))


def _single_view_loss(graphdef, moe_cfg):
    """``mean(y^2)`` (+ router losses for top-k) of one view; aux: the dropped fraction."""
    import jax.numpy as jnp
    from flax import nnx

    def loss(params, rest, x, key):
        del key  # top-k routing with no jitter or expert dropout draws nothing
        layer = nnx.merge(graphdef, params, rest)
        if moe_cfg is None:
            return jnp.mean(jnp.square(layer(x).astype(jnp.float32))), jnp.zeros((), jnp.float32)
        y, metrics = layer(x)
        value = jnp.mean(jnp.square(y.astype(jnp.float32)))
        value = value + moe_cfg.aux_loss_coef * metrics["aux_loss"] + moe_cfg.z_loss_coef * metrics["z_loss"]
        return value, metrics["dropped"]

    return loss


def _two_view_loss(graphdef, mode: str, alpha: float):
    """Sum over two views of ``mean(y^2)``.

    ``mode``: "vmap" / "twice" for the dense FFN; "stochastic" (``jax.vmap`` over the views and two
    keys) or "fold" (both views as one batch of ``2 * B`` sequences, one key) for a THOR layer.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxslim.moe.losses import symmetric_kl

    def loss(params, rest, x2, key):
        layer = nnx.merge(graphdef, params, rest)
        dropped = jnp.zeros((), jnp.float32)
        if mode == "twice":
            ys = jnp.stack([layer(x2[0]), layer(x2[1])])
        elif mode == "vmap":
            ys = jax.vmap(layer)(x2)
        elif mode == "stochastic":
            views = jax.random.split(key, 2)
            ys, metrics = jax.vmap(lambda v, r: layer(v, rng=r))(x2, views)
            dropped = jnp.mean(metrics["dropped"])
        else:  # "fold"
            two, b, t, d = x2.shape
            y, metrics = layer(x2.reshape(two * b, t, d), rng=key)
            ys, dropped = y.reshape(two, b, t, d), metrics["dropped"]
        ys = ys.astype(jnp.float32)
        value = 2.0 * jnp.mean(jnp.square(ys))  # = mean over view 1 + mean over view 2
        if mode in ("stochastic", "fold") and alpha:
            value = value + alpha * symmetric_kl(ys[0], ys[1])
        return value, dropped

    return loss


def _compile(v: Variant, loss_fn, params, rest, x, keys) -> None:
    """Compiles ``value_and_grad(loss_fn)`` w.r.t. (params, x) and sets ``v.step``."""
    import jax

    t0 = time.perf_counter()
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True))
    compiled = grad_fn.lower(params, rest, x, keys[0]).compile()
    v.compile_s = time.perf_counter() - t0

    def step(i: int):
        out = compiled(params, rest, x, keys[i % len(keys)])
        return jax.block_until_ready(out)

    v.step = step


def build_variants(args) -> list[Variant]:
    """All rows of the requested sections, compiled (not yet run)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxslim.config import MoeConfig
    from jaxslim.models.mlp import Mlp
    from jaxslim.moe.layer import MoeLayer

    b, t = args.tokens
    dt = jnp.dtype(args.dtype)
    kx, kv, kr = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, t, args.d_model), jnp.float32).astype(dt)
    x2 = jax.random.normal(kv, (2, b, t, args.d_model), jnp.float32).astype(dt)
    keys = list(jax.random.split(kr, 16))  # a fresh draw per call, cycling
    f = args.d_ff
    variants: list[Variant] = []

    def add(v: Variant, module, loss_of_graphdef, inputs) -> None:
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        v.params = _count(params)
        print(f"compiling {v.section}: {v.name} ...", flush=True)
        _compile(v, loss_of_graphdef(graphdef), params, rest, inputs, keys)
        variants.append(v)

    if "topk" in args.sections:
        mid = args.experts[len(args.experts) // 2]
        for k in args.top_k:
            dense = Variant(f"dense f={k}*{f}", "topk", "dense", None, None, k, None, 0)
            add(dense, Mlp(_model_cfg(args, d_ff=f), k * f, rngs=nnx.Rngs(0)), _loss_single(None), x)
            for e in args.experts:
                if k > e:
                    continue
                rows = [("capacity", args.cf), ("dropless", None)]
                if e == mid and args.cf_extra:
                    rows.insert(1, ("capacity", args.cf_extra))
                for dispatch, cf in rows:
                    moe = MoeConfig(
                        num_experts=e,
                        top_k=k,
                        router="topk",
                        dispatch=dispatch,
                        train_capacity_factor=cf or 1.25,
                    )
                    label = f"{dispatch} E={e} k={k}" + (f" cf={cf:g}" if cf else "")
                    v = Variant(label, "topk", "topk", dispatch, e, k, cf, 0, baseline=dense.name)
                    layer = MoeLayer(_model_cfg(args, d_ff=f, moe=moe), rngs=nnx.Rngs(0))
                    add(v, layer, _loss_single(moe), x)

    if "thor" in args.sections:
        dense_cfg = _model_cfg(args, d_ff=f)
        for mode, label in (("vmap", "dense x2 (vmap)"), ("twice", "dense x2 (two calls)")):
            v = Variant(label, "thor", "dense", None, None, None, None, 0, views=mode)
            add(v, Mlp(dense_cfg, f, rngs=nnx.Rngs(0)), _loss_two(mode, 0.0), x2)
        for e in args.experts:
            # "batch" and "sequence" run the drawn experts' FFNs directly: no dispatch at all
            rows = [("batch", "dropless"), ("sequence", "dropless")]
            rows += [("token", d) for d in ("capacity", "dropless")]
            for granularity, dispatch in rows:
                moe = MoeConfig(
                    num_experts=e,
                    top_k=1,
                    router="stochastic",
                    dispatch=dispatch,
                    granularity=granularity,
                    train_capacity_factor=args.cf,
                )
                label = f"stochastic {granularity} E={e}"
                if granularity == "token":
                    label += f" {dispatch}" + (f" cf={args.cf:g}" if dispatch == "capacity" else "")
                cf = args.cf if dispatch == "capacity" and granularity == "token" else None
                v = Variant(
                    label, "thor", "stochastic", dispatch, e, 1, cf, 0, baseline="dense x2", views="vmap"
                )
                if granularity != "token":
                    v.dispatch = None
                layer = MoeLayer(_model_cfg(args, d_ff=f, moe=moe), rngs=nnx.Rngs(0))
                try:
                    add(v, layer, _loss_two("stochastic", args.alpha), x2)
                except NotImplementedError as err:
                    if granularity == "batch":
                        raise
                    # jax.vmap of jax.lax.ragged_dot is not implemented (jax 0.10.2): run both views
                    # as one batch of 2 * B sequences instead. For per-sequence and per-token draws
                    # that is the same distribution as two views with independent keys.
                    print(f"  vmap over the views failed ({err}); folding the views into the batch")
                    v.name += " (views folded into batch)"
                    v.views = f"folded into the batch: vmap failed with {type(err).__name__}: {err}"
                    add(v, layer, _loss_two("fold", args.alpha), x2)
    return variants


def _loss_single(moe_cfg):
    return lambda graphdef: _single_view_loss(graphdef, moe_cfg)


def _loss_two(mode: str, alpha: float):
    return lambda graphdef: _two_view_loss(graphdef, mode, alpha)


def run(variants: list[Variant], args) -> None:
    """Warm-up, then ``args.repeats`` shuffled rounds of ``args.inner`` calls per variant."""
    for v in variants:
        for i in range(max(args.warmup, 1)):  # at least one call: it reports the dropped fraction
            (_, dropped), _ = v.step(i)
        v.dropped = float(dropped)
    order = list(variants)
    rng = random.Random(0)
    calls = 0
    for r in range(args.repeats):
        rng.shuffle(order)
        for v in order:
            t0 = time.perf_counter()
            for _ in range(args.inner):
                v.step(calls)
                calls += 1
            v.times.append((time.perf_counter() - t0) / args.inner)
        print(f"round {r + 1}/{args.repeats}", flush=True)


def summarise(variants: list[Variant], args) -> list[dict]:
    by_name = {v.name: v for v in variants}
    med = {v.name: statistics.median(v.times) for v in variants}
    pair = [n for n in ("dense x2 (vmap)", "dense x2 (two calls)") if n in by_name]
    thor_base = min(pair, key=med.__getitem__) if pair else None
    tokens = args.tokens[0] * args.tokens[1]
    rows = []
    for v in variants:
        base = thor_base if v.baseline == "dense x2" else v.baseline
        if v.section == "thor" and v.kind == "dense":
            base = None if v.name == thor_base else thor_base
        row = {
            "section": v.section,
            "variant": v.name,
            "kind": v.kind,
            "dispatch": v.dispatch,
            "views": v.views,
            "experts": v.experts,
            "top_k": v.top_k,
            "capacity_factor": v.cf,
            "params": v.params,
            "median_ms": 1e3 * med[v.name],
            "min_ms": 1e3 * min(v.times),
            "tokens_per_s": tokens / med[v.name],
            "compile_s": v.compile_s,
            "dropped": v.dropped if v.dispatch == "capacity" else None,
            "baseline": base,
            "ratio": None,
            "paired_ratio": None,
            "times_s": v.times,
        }
        if base is not None:
            b = by_name[base]
            row["ratio"] = med[v.name] / med[base]
            row["paired_ratio"] = statistics.median(a / c for a, c in zip(v.times, b.times, strict=True))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| section | variant | params (M) | median ms | min ms | vs baseline | paired | dropped | tokens/s | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "baseline" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        paired = "-" if r["paired_ratio"] is None else f"{r['paired_ratio']:.2f}x"
        dropped = "-" if r["dropped"] is None else f"{100 * r['dropped']:.1f}%"
        lines.append(
            f"| {r['section']} | {r['variant']} | {r['params'] / 1e6:.3f} | {r['median_ms']:.2f} | "
            f"{r['min_ms']:.2f} | {ratio} | {paired} | {dropped} | {r['tokens_per_s']:,.0f} | "
            f"{r['compile_s']:.2f} |"
        )
    return "\n".join(lines)


def _ragged_dot_flags() -> dict:
    """The jax flags that pick ``ragged_dot``'s GPU/TPU lowering (absent ones are left out)."""
    import jax

    out = {}
    for name in (
        "jax_ragged_dot_use_ragged_dot_instruction",
        "jax_ragged_dot_use_gpu_pallas_triton_lowering",
    ):
        try:
            out[name] = bool(getattr(jax.config, name))
        except AttributeError:
            pass
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tokens", type=int, nargs=2, default=None, metavar=("B", "T"), help="batch x length (8 256)"
    )
    p.add_argument("--d-model", type=int, default=None, help="residual width (256)")
    p.add_argument("--d-ff", type=int, default=None, help="hidden width of one expert, F (512)")
    p.add_argument("--experts", type=int, nargs="+", default=None, help="expert counts (4 8 16)")
    p.add_argument("--top-k", type=int, nargs="+", default=[1, 2], help="top-k of the learned router (1 2)")
    p.add_argument("--cf", type=float, default=1.25, help="train capacity factor (1.25)")
    p.add_argument(
        "--cf-extra", type=float, default=2.0, help="a second capacity factor for the middle E (2.0; 0: none)"
    )
    p.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="GELU+biases or SwiGLU FFNs")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--sections", nargs="+", choices=("topk", "thor"), default=["topk", "thor"])
    p.add_argument("--alpha", type=float, default=0.0, help="THOR consistency weight in the MoE rows (0)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (7; --quick 3)")
    p.add_argument("--inner", type=int, default=None, help="calls per variant per round (3; --quick 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant after compiling")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few rounds (a smoke run)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = p.parse_args(argv)
    small = args.quick
    args.tokens = args.tokens or ([2, 64] if small else [8, 256])
    args.d_model = args.d_model or (64 if small else 256)
    args.d_ff = args.d_ff or (128 if small else 512)
    args.experts = args.experts or ([4] if small else [4, 8, 16])
    args.repeats = args.repeats or (3 if small else 7)
    args.inner = args.inner or (1 if small else 3)

    import jax
    from common import machine_line, write_results

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    variants = build_variants(args)
    run(variants, args)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = summarise(variants, args)
    table = markdown(rows)
    b, t = args.tokens
    setup = (
        f"{args.arch} FFNs, {args.dtype} compute / float32 params, x [{b}, {t}, {args.d_model}], expert width "
        f"{args.d_ff}, {args.repeats} rounds x {args.inner} calls, interleaved; device {jax.devices()[0].device_kind}"
    )
    print(f"\n{machine_line()}\n{setup}\n")
    print(table)
    thor = [r for r in rows if r["kind"] == "stochastic" and r["ratio"] is not None]
    if thor:
        print(f"\nTHOR rows against {thor[0]['baseline']!r} (the cheaper dense pair; goal <= 1.1x):")
        for r in thor:
            print(f"  {r['variant']}: {r['ratio']:.2f}x (paired {r['paired_ratio']:.2f}x)")
    if load_before and load_before[0] > 0.5:
        print(f"\nwarning: load average {load_before[0]:.2f} before the run: other work shared the machine")
    name = "moe_layer_quick" if args.quick else "moe_layer"
    payload = {
        "machine_line": machine_line(),
        "device_kind": jax.devices()[0].device_kind,
        "setup": setup,
        "quick": args.quick,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "ragged_dot_flags": _ragged_dot_flags(),
        "rows": rows,
        "table_markdown": table,
    }
    path = write_results(args.out, name, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
