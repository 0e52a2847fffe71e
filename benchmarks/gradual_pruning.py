"""Gradual pruning of the demo GPT during training: dense vs 80% unstructured vs 2:4 (SR-STE).

Each variant trains the ``shakespeare_gpt`` preset (about 10M parameters, 600 steps) from the same
initialisation and data order with the ``prune`` section of the training config:

* ``unstructured 80%``: Zhu & Gupta's cubic schedule, magnitude, per layer, from step 50 (after the
  warm-up) with 10 mask updates every 30 steps (final sparsity from step 350 on);
* ``2:4 SR-STE``: N:M along each kernel's contraction axis, straight-through with SR-STE decay
  2e-4, masks recomputed every step from step 0.

Reported: final validation loss on the whole validation split, achieved sparsity, and the step time
of the jitted training step of each variant on one fixed batch (variants interleaved, median over
rounds; the overhead is the ratio to the dense step measured in the same rounds; the unstructured
step is timed outside a mask-update step, which happens once per 30 steps).

Prints a table and writes ``benchmarks/results/gradual_pruning.json``.

    python benchmarks/gradual_pruning.py [--steps 600] [--rounds 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import tempfile
import time

import numpy as np

VARIANTS = {
    "dense": {},
    "unstructured 80%": dict(
        kind="unstructured", sparsity=0.8, begin_step=50, num_updates=10, update_every=30
    ),
    "2:4 SR-STE": dict(kind="nm", n=2, m=4, ste=True, sr_ste_decay=2e-4, update_every=1),
}


def step_times(results: dict, data, rounds: int, repeats: int = 10) -> dict[str, list[float]]:
    """Seconds per training step of each finished run's step function, on one batch, interleaved."""
    import jax

    from jaxslim.engine.step import make_train_step
    from jaxslim.prune import straight_through_params
    from jaxslim.sharding import shard_batch

    fns = {}
    for name, r in results.items():
        view = straight_through_params if r.config.prune.ste else None
        fns[name] = make_train_step(r.setup, donate=False, params_view=view)
    mesh, rules = next(iter(results.values())).setup.mesh, r.config.mesh.rules
    batch = shard_batch(next(data.train_iterator()), mesh, rules)
    for name, fn in fns.items():  # compile and warm up
        jax.block_until_ready(fn(results[name].state, batch))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            state = results[name].state
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = fn(state, batch)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()

    from common import machine_line, write_results

    from jaxslim.cli.presets import load_preset
    from jaxslim.config import PruneConfig
    from jaxslim.data import TextData
    from jaxslim.training import train

    base = load_preset("shakespeare_gpt")
    base = dataclasses.replace(base, steps=args.steps, sample_tokens=0, tensorboard=False, eval_every=0)
    data = TextData(base.data)
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, prune in VARIANTS.items():
            cfg = dataclasses.replace(
                base,
                workdir=str(pathlib.Path(tmp) / name.replace(" ", "_").replace(":", "-").replace("%", "")),
                prune=PruneConfig(**prune),
                checkpoint=dataclasses.replace(base.checkpoint, every=0),
            )
            t0 = time.perf_counter()
            r = train(cfg, data=data, progress=False)
            wall = time.perf_counter() - t0
            results[name] = r
            rows.append(
                {
                    "variant": name,
                    "prune": prune,
                    "val_loss": r.eval_metrics["eval_loss"],
                    "train_loss": r.last_metrics["loss"],
                    "sparsity": r.last_metrics.get("sparsity/overall", 0.0),
                    "train_seconds": wall,
                }
            )
        times = step_times(results, data, args.rounds)
    dense = float(np.median(times["dense"]))
    for row in rows:
        t = float(np.median(times[row["variant"]]))
        row["step_ms"] = 1e3 * t
        row["overhead"] = t / dense - 1.0
        row["val_loss_vs_dense"] = row["val_loss"] - rows[0]["val_loss"]

    print(
        f"{machine_line()}; demo GPT {args.steps} steps, batch {base.data.batch_size} x {base.data.seq_len}"
    )
    print("| variant | sparsity | val loss | vs dense | step ms (median) | overhead | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['sparsity']:.3f} | {r['val_loss']:.4f} | {r['val_loss_vs_dense']:+.4f} | "
            f"{r['step_ms']:.1f} | {r['overhead']:+.1%} | {r['train_seconds']:.0f} |"
        )
    write_results(
        args.out,
        "gradual_pruning",
        {"steps": args.steps, "rounds": args.rounds, "step_seconds": times, "rows": rows},
    )


if __name__ == "__main__":
    main()
