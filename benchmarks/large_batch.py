"""Large-batch training on the demo GPT and the embedded Shakespeare corpus: AdamW at the base batch
against LAMB (per-layer trust ratios) and AdamW at 8x and 16x the batch, and the step-time overhead
of the axis-aware LAMB over ``optax.lamb``.

The sweep gives every run the same number of tokens; then the best learning rate of each optimizer
at 8x and 16x runs again on a schedule planned for ``--long`` times the tokens (4 by default) and
stops at the target, which tells how many steps and tokens a large batch needs when equal tokens
are not enough at this scale. Large-batch runs scale the learning rate by the square
root of the batch ratio and warm up over the same share of their (fewer) steps. The target
validation loss is the loss the base-batch AdamW run reaches at the end of its budget plus a small
margin; the table reports the steps and tokens each run needs to get there (or that it does not).
The LAMB learning rate is chosen from a small grid at 8x (the same grid is run for AdamW at 8x), and
the best multiplier is reused at 16x.

Scaled down to finish in about 50 minutes on a 2-core CPU: a GPT-2-style model with d_model 128,
2 layers and a 1024-token BPE, sequences of 64 tokens, base batch 8.

    python benchmarks/large_batch.py            # the full run (about 50 minutes on 2 cores)
    python benchmarks/large_batch.py --quick    # a smoke run (about 2 minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import random
import statistics
import sys
import time

import jax
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_line, write_results  # noqa: E402
from jaxslim.config import DataConfig, MeshConfig, ModelConfig  # noqa: E402
from jaxslim.data import TextData  # noqa: E402
from jaxslim.data.iterators import TrainIterator  # noqa: E402
from jaxslim.models import Transformer  # noqa: E402
from jaxslim.optim import decay_mask, lamb_preset, warmup_decay_schedule  # noqa: E402
from jaxslim.optim.trust import trust_ratio_metric_fn  # noqa: E402
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch  # noqa: E402
from jaxslim.training import create_train_state, lm_objective, make_eval_step, make_train_step  # noqa: E402


@dataclasses.dataclass
class Run:
    name: str
    optimizer: str  # "adamw" | "lamb" | "optax_lamb"
    batch: int
    lr: float
    steps: int
    warmup: int
    evals: list = dataclasses.field(default_factory=list)  # (step, tokens, val loss)
    seconds: float = 0.0
    trust: dict = dataclasses.field(default_factory=dict)
    stop_at: float | None = None  # stop once the validation loss is at or below this


def make_tx(optimizer: str, lr: float, steps: int, warmup: int, weight_decay: float):
    schedule = warmup_decay_schedule(
        lr, warmup_steps=warmup, total_steps=steps, decay="cosine", final_ratio=0.1
    )
    if optimizer == "adamw":
        opt = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay, mask=decay_mask)
    elif optimizer == "lamb":  # axis-aware, TF-addons exclusions (no decay / ratio for biases, norms)
        opt = lamb_preset("tf_addons", schedule, b2=0.95, weight_decay=weight_decay)
    elif optimizer == "lamb_all":  # axis-aware, ratio on every leaf (the overhead comparison)
        opt = lamb_preset("optax", schedule, b2=0.95, weight_decay=weight_decay)
    else:  # optax.lamb: one ratio per array
        opt = optax.lamb(schedule, b2=0.95, weight_decay=weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(1.0), opt)


class Bench:
    def __init__(self, args):
        self.args = args
        self.data = TextData(
            DataConfig(
                corpus="shakespeare",
                seq_len=args.seq_len,
                batch_size=args.base_batch,
                bpe_vocab_size=args.vocab,
            )
        )
        self.model_cfg = ModelConfig.gpt2(
            vocab_size=self.data.vocab_size,
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=4,
            d_ff=4 * args.d_model,
            max_len=args.seq_len,
        )
        mesh_cfg = MeshConfig(data=-1)
        self.mesh, self.rules = make_mesh(mesh_cfg), mesh_cfg.rules
        val = list(self.data.val_batches(batch_size=64))
        self.val = val[: args.eval_batches]

    def setup(self, tx, metric_fns=()):
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            state, setup = create_train_state(
                lambda: Transformer(self.model_cfg, rngs=nnx.Rngs(0)), tx, self.mesh, self.rules
            )
            bsh = batch_sharding(self.mesh, self.rules)
            step = make_train_step(setup, lm_objective, batch_sharding=bsh, metric_fns=metric_fns)
            ev = make_eval_step(setup, lm_objective, batch_sharding=bsh)
        return state, step, ev

    def evaluate(self, ev, state) -> float:
        loss_sum = count = 0.0
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            for b in self.val:
                m = jax.device_get(ev(state, shard_batch(b, self.mesh, self.rules)))
                loss_sum += float(m["loss_sum"])
                count += float(m["count"])
        return loss_sum / count

    def batches(self, batch: int):
        it = TrainIterator(
            self.data.train_sequences, global_batch_size=batch, seed=0, process_index=0, process_count=1
        )
        while True:
            yield next(it)

    def train(self, run: Run) -> Run:
        tx = make_tx(run.optimizer, run.lr, run.steps, run.warmup, self.args.weight_decay)
        fns = (trust_ratio_metric_fn,) if run.optimizer != "adamw" else ()
        state, step, ev = self.setup(tx, fns)
        tokens_per_step = run.batch * self.args.seq_len
        n_evals = self.args.evals
        eval_at = sorted({max(1, round(run.steps * (i + 1) / n_evals)) for i in range(n_evals)})
        data = self.batches(run.batch)
        t0 = time.perf_counter()
        trust_seen: list[dict] = []
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            for s in range(1, run.steps + 1):
                state, metrics = step(state, shard_batch(next(data), self.mesh, self.rules))
                if s in eval_at:
                    loss = self.evaluate(ev, state)
                    m = jax.device_get(metrics)
                    if not math.isfinite(float(m["loss"])):
                        run.evals.append((s, s * tokens_per_step, float("nan")))
                        break
                    run.evals.append((s, s * tokens_per_step, loss))
                    if fns:
                        trust_seen.append({k: float(v) for k, v in m.items() if k.startswith("trust_ratio/")})
                    if run.stop_at is not None and loss <= run.stop_at:
                        break
        run.seconds = time.perf_counter() - t0
        if trust_seen:
            run.trust = trust_seen[-1]
        print(
            f"  {run.name:<28} batch {run.batch:>4} lr {run.lr:.4g} steps {run.steps:>5}: "
            f"final val {run.evals[-1][2]:.4f} ({run.seconds:.0f} s)",
            flush=True,
        )
        return run

    def overhead(self, batch: int, rounds: int, steps: int) -> dict:
        """Median step time of the axis-aware LAMB vs optax.lamb (both with every leaf trusted and
        no metric functions), interleaved in shuffled order, over ``rounds`` rounds."""
        variants = {}
        for name in ("optax_lamb", "lamb_all"):
            state, step, _ = self.setup(make_tx(name, 1e-3, 10_000, 10, self.args.weight_decay))
            variants[name] = [state, step]
        fixed = next(self.batches(batch))
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            batch_arr = shard_batch(fixed, self.mesh, self.rules)
            for v in variants.values():  # compile and warm up
                for _ in range(3):
                    v[0], _ = v[1](v[0], batch_arr)
                jax.block_until_ready(v[0])
            times = {k: [] for k in variants}
            order = list(variants)
            for _ in range(rounds):
                random.shuffle(order)
                for name in order:
                    v = variants[name]
                    t = time.perf_counter()
                    for _ in range(steps):
                        v[0], _ = v[1](v[0], batch_arr)
                    jax.block_until_ready(v[0])
                    times[name].append((time.perf_counter() - t) / steps)
        ratios = [a / b for a, b in zip(times["lamb_all"], times["optax_lamb"], strict=True)]
        return {
            "batch": batch,
            "optax_lamb_median_s": statistics.median(times["optax_lamb"]),
            "jaxslim_lamb_median_s": statistics.median(times["lamb_all"]),
            "ratio_of_medians": statistics.median(times["lamb_all"]) / statistics.median(times["optax_lamb"]),
            "median_paired_ratio": statistics.median(ratios),
            "rounds": rounds,
            "steps_per_round": steps,
            "times": times,
        }


def measure_overhead(bench: Bench, args) -> list[dict]:
    return [
        bench.overhead(b, args.overhead_rounds, 20 if b == args.base_batch else 5)
        for b in (args.base_batch, 8 * args.base_batch)
    ]


def print_overhead(overhead: list[dict]) -> None:
    print()
    print(
        "| step time, batch | optax.lamb (per array) median s | jaxslim lamb (per layer) median s "
        "| ratio | median paired ratio |"
    )
    print("|---|---|---|---|---|")
    for o in overhead:
        print(
            f"| {o['batch']} | {o['optax_lamb_median_s']:.4f} | {o['jaxslim_lamb_median_s']:.4f} | "
            f"{o['ratio_of_medians']:.3f} | {o['median_paired_ratio']:.3f} |"
        )


def first_reach(run: Run, target: float):
    for step, tokens, loss in run.evals:
        if loss <= target:
            return step, tokens
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--base-steps", type=int, default=2400)
    p.add_argument("--base-batch", type=int, default=8)
    p.add_argument("--base-lr", type=float, default=1e-3, help="AdamW learning rate at the base batch")
    p.add_argument("--lamb-base-lrs", type=float, nargs="+", default=[0.0025, 0.005, 0.01, 0.02])
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--evals", type=int, default=24)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--margin", type=float, default=0.02, help="target = base AdamW final loss + margin")
    p.add_argument(
        "--long",
        type=float,
        default=4.0,
        help="token budget of the second, longer large-batch runs (x the base run's tokens; 1 = none)",
    )
    p.add_argument("--overhead-rounds", type=int, default=9)
    p.add_argument(
        "--overhead-only",
        action="store_true",
        help="only the step-time comparison with optax.lamb (writes large_batch_overhead.json)",
    )
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.base_steps, args.evals, args.eval_batches, args.overhead_rounds = 320, 8, 2, 3
        args.lamb_base_lrs, args.long = args.lamb_base_lrs[1:2], 2.0
    started = time.perf_counter()
    print(machine_line())
    bench = Bench(args)
    print(
        f"model: {bench.model_cfg.arch} d_model {args.d_model}, {args.layers} layers, vocab {bench.data.vocab_size}"
    )

    if args.overhead_only:
        overhead = measure_overhead(bench, args)
        print_overhead(overhead)
        payload = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "overhead": overhead}
        payload["versions"] = {"jax": jax.__version__, "optax": optax.__version__}
        print(f"wrote {write_results(args.out, 'large_batch_overhead', payload)}")
        return

    def warm(steps):
        return max(1, round(0.05 * steps))

    runs: list[Run] = []
    base = bench.train(
        Run("AdamW (base)", "adamw", args.base_batch, args.base_lr, args.base_steps, warm(args.base_steps))
    )
    runs.append(base)
    target = base.evals[-1][2] + args.margin
    print(f"target validation loss: {target:.4f} (base AdamW final {base.evals[-1][2]:.4f} + {args.margin})")

    best = {}
    for k in (8, 16):
        steps = args.base_steps // k
        scale = math.sqrt(k)
        lamb_lrs = args.lamb_base_lrs if k == 8 else [best["lamb"]]
        adam_mults = [0.5, 1.0, 2.0] if (k == 8 and not args.quick) else [1.0]
        for base_lr in lamb_lrs:
            runs.append(
                bench.train(
                    Run(f"LAMB {k}x", "lamb", k * args.base_batch, base_lr * scale, steps, warm(steps))
                )
            )
        for mult in adam_mults:
            if k == 16:
                mult = best["adamw"]
            lr = args.base_lr * mult * scale
            runs.append(bench.train(Run(f"AdamW {k}x", "adamw", k * args.base_batch, lr, steps, warm(steps))))
        if k == 8:
            for opt, key in (("lamb", "lamb"), ("adamw", "adamw")):
                cands = [r for r in runs if r.optimizer == opt and r.batch == 8 * args.base_batch]
                winner = min(cands, key=lambda r: r.evals[-1][2] if math.isfinite(r.evals[-1][2]) else 1e9)
                best[key] = winner.lr / scale if opt == "lamb" else winner.lr / scale / args.base_lr

    # the best learning rate of each optimizer again, with a longer budget (a schedule planned for
    # ``--long`` times the base tokens), stopped once it reaches the target
    for k in (8, 16) if args.long > 1 else ():
        steps = int(args.long * args.base_steps) // k
        scale = math.sqrt(k)
        for name, opt, lr in (
            (f"LAMB {k}x, {args.long:g}x tokens", "lamb", best["lamb"] * scale),
            (f"AdamW {k}x, {args.long:g}x tokens", "adamw", best["adamw"] * args.base_lr * scale),
        ):
            run = Run(name, opt, k * args.base_batch, lr, steps, warm(steps), stop_at=target)
            runs.append(bench.train(run))

    overhead = measure_overhead(bench, args)

    rows = []
    for r in runs:
        hit = first_reach(r, target)
        rows.append(
            {
                "run": r.name,
                "batch": r.batch,
                "lr": r.lr,
                "steps": r.steps,
                "steps_run": r.evals[-1][0],
                "tokens": r.steps * r.batch * args.seq_len,
                "final_val_loss": r.evals[-1][2],
                "steps_to_target": hit[0] if hit else None,
                "tokens_to_target": hit[1] if hit else None,
                "seconds": r.seconds,
                "trust_ratio": r.trust,
                "evals": r.evals,
            }
        )
    print()
    print(
        f"target validation loss {target:.4f}; evaluated {args.evals} times per run on {len(bench.val) * 64} sequences"
    )
    print()
    print(
        "| run | batch | peak lr | planned steps | final val loss | steps to target | tokens to target | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        reach = (
            (f"{row['steps_to_target']}", f"{row['tokens_to_target'] / 1e6:.2f}M")
            if row["steps_to_target"] is not None
            else ("not reached", "—")
        )
        print(
            f"| {row['run']} | {row['batch']} | {row['lr']:.4g} | {row['steps']} | {row['final_val_loss']:.4f} | "
            f"{reach[0]} | {reach[1]} | {row['seconds']:.0f} |"
        )
    print_overhead(overhead)
    total = time.perf_counter() - started
    print(f"\ntotal wall time {total / 60:.1f} min")
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "model": dataclasses.asdict(bench.model_cfg),
        "target": target,
        "runs": rows,
        "overhead": overhead,
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "wall_s": total,
        "gpu": "no GPU on this machine: the larger-batch GPU runs were not made",
    }
    path = write_results(args.out, "large_batch_quick" if args.quick else "large_batch", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
