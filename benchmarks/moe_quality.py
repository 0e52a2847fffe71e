"""Quality at equal compute: the demo GPT dense vs Switch top-1 vs THOR stochastic experts.

Every variant is the ``shakespeare_gpt`` model (4 layers, width 384) trained on the embedded
Shakespeare corpus with the same data order, steps and optimizer; the MoE variants put experts in
every other layer, each expert as wide as the dense FFN, so the active parameters and FLOPs per
token equal the dense model's:

* ``switch E=N``: the ``switch_shakespeare`` preset, top-1 with capacity 1.25 (2.0 in evaluation),
  balance loss 0.01, z-loss 1e-3;
* ``thor E=N alpha=A``: the ``thor_shakespeare`` preset, a random expert per layer for the whole
  batch; alpha 5 trains two views with the consistency loss (two forward and backward passes per
  step), alpha 0 one view.

Reported: validation loss on the whole validation split (THOR evaluates with a random expert per
sequence; the dense and Switch models deterministically), total and active parameters, and the
training step time of each finished run on one fixed batch (variants interleaved, median of
``--rounds`` rounds) with tokens per second and the ratio to the dense step.

Prints a table and writes ``benchmarks/results/moe_quality.json``.

    python benchmarks/moe_quality.py [--steps 300] [--rounds 5] [--variants dense "switch E=4" ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import tempfile
import time

import numpy as np

VARIANTS = {
    "dense": "shakespeare_gpt",
    "switch E=2": "switch_shakespeare:experts=2",
    "switch E=4": "switch_shakespeare:experts=4",
    "thor E=2 alpha=5": "thor_shakespeare:experts=2,alpha=5",
    "thor E=2 alpha=0": "thor_shakespeare:experts=2,alpha=0",
    "thor E=4 alpha=5": "thor_shakespeare:experts=4,alpha=5",
    "thor E=4 alpha=0": "thor_shakespeare:experts=4,alpha=0",
}


def _active_params(cfg, total: int) -> int:
    """Parameters one token uses: the total minus the experts it does not visit."""
    moe = cfg.model.moe
    if moe is None:
        return total
    per_expert = (2 + int(cfg.model.gated_mlp)) * cfg.model.d_model * cfg.model.expert_ffn
    if cfg.model.mlp_bias:
        per_expert += cfg.model.expert_ffn + cfg.model.d_model
    layers = sum(cfg.model.is_moe_layer(i) for i in range(cfg.model.n_layers))
    router = cfg.model.d_model * moe.num_experts if moe.router == "topk" else 0
    return total - layers * (moe.num_experts - moe.top_k) * per_expert - layers * router


def step_times(results: dict, data, rounds: int, repeats: int = 5) -> dict[str, list[float]]:
    """Seconds per training step of each finished run's step function on one batch, interleaved."""
    import jax

    from jaxslim.engine import lm_objective, make_train_step
    from jaxslim.method import compose
    from jaxslim.sharding import shard_batch
    from jaxslim.training import methods_of

    fns = {}
    for name, r in results.items():
        methods = methods_of(r.config)
        objective = compose([m.objective for m in methods], lm_objective)
        terms = [t for m in methods for t in m.loss_terms]
        fns[name] = make_train_step(r.setup, objective, loss_terms=terms, donate=False)
    first = next(iter(results.values()))
    batch = shard_batch(next(data.train_iterator()), first.setup.mesh, first.config.mesh.rules)
    for name, fn in fns.items():
        jax.block_until_ready(fn(results[name].state, batch))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = fn(results[name].state, batch)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / repeats)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()
    if "dense" not in args.variants:
        args.variants.insert(0, "dense")

    from common import machine_line, write_results

    from jaxslim.cli.presets import load_preset
    from jaxslim.data import TextData
    from jaxslim.engine.state import count_params
    from jaxslim.training import train

    data, results, rows = None, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            cfg = load_preset(VARIANTS[name])
            cfg = dataclasses.replace(
                cfg,
                steps=args.steps,
                sample_tokens=0,
                tensorboard=False,
                eval_every=0,
                workdir=str(pathlib.Path(tmp) / name.replace(" ", "_").replace("=", "")),
                checkpoint=dataclasses.replace(cfg.checkpoint, every=0),
            )
            data = data or TextData(cfg.data)
            t0 = time.perf_counter()
            r = train(cfg, data=data, progress=False)
            total = count_params(r.state)
            results[name] = r
            rows.append(
                {
                    "variant": name,
                    "preset": VARIANTS[name],
                    "val_loss": r.eval_metrics["eval_loss"],
                    "params": total,
                    "active_params": _active_params(r.config, total),
                    "train_seconds": time.perf_counter() - t0,
                }
            )
        times = step_times(results, data, args.rounds)
    base = next(iter(results.values())).config
    tokens = base.data.batch_size * base.data.seq_len
    dense = float(np.median(times["dense"]))
    for row in rows:
        t = float(np.median(times[row["variant"]]))
        row.update(step_ms=1e3 * t, tokens_per_s=tokens / t, step_vs_dense=t / dense)
        row["val_loss_vs_dense"] = row["val_loss"] - rows[0]["val_loss"]

    print(
        f"{machine_line()}; demo GPT {args.steps} steps, batch {base.data.batch_size} x {base.data.seq_len}"
    )
    print("| variant | params (M) | active (M) | val loss | vs dense | step ms | tokens/s | step vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['params'] / 1e6:.2f} | {r['active_params'] / 1e6:.2f} | {r['val_loss']:.4f} | "
            f"{r['val_loss_vs_dense']:+.4f} | {r['step_ms']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{r['step_vs_dense']:.2f}x |"
        )
    write_results(
        args.out,
        "moe_quality",
        {"steps": args.steps, "rounds": args.rounds, "step_seconds": times, "rows": rows},
    )


if __name__ == "__main__":
    main()
