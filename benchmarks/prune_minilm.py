"""Label-free post-training pruning of the real all-MiniLM-L6-v2 (the embedded checkpoint).

For each FLOPs budget: the whole pipeline (per-example Fisher from 2048 KJV verses, search,
rearrangement, least-squares tuning against the teacher assistant) is timed, the model is slimmed,
and it is compared with the dense model on

* cosine similarity of sentence embeddings (mean pooling, as sentence-transformers) on held-out verses;
* accuracy of a logistic-regression probe on frozen embeddings for the VADER movie-review snippets
  (sign of the human valence; 6,000 train / 2,000 test sentences, zero-valence rows dropped);
* CPU latency of the slim vs the dense model at batch 32 x 128 (interleaved, median of rounds).

Prints a table and writes ``benchmarks/results/prune_minilm.json``.

    python benchmarks/prune_minilm.py [--budgets 0.5 0.6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--num-samples", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()

    import jax
    from common import machine_line, probe_accuracy, review_probe_data, write_results

    from jaxslim.cli.demo import find_minilm
    from jaxslim.convert.native import load_model
    from jaxslim.prune import (
        bucket_batches,
        distill_loss,
        embed_sentences,
        load_sentences,
        model_latency,
        prune_post_training,
        slim,
        tokenize,
    )

    t_start = time.perf_counter()
    path = find_minilm()
    model, tok = load_model(path), path / "tokenizer.json"
    t_load = time.perf_counter() - t_start
    sents = load_sentences("kjv", args.num_samples + 512, seed=0)
    ids = tokenize(tok, sents, 128)
    sample = bucket_batches(ids[: args.num_samples])
    held = bucket_batches(ids[args.num_samples :])
    review_batches, labels = review_probe_data(tok)

    def probe(m):
        return probe_accuracy(embed_sentences(m, review_batches), labels)

    dense_emb = embed_sentences(model, held)
    rows = [{"variant": "dense", "flops": 1.0, "cosine": 1.0, "probe_accuracy": probe(model)}]
    models = {"dense": model}
    grads = None
    for budget in args.budgets:
        t0 = time.perf_counter()
        result = prune_post_training(model, sample, distill_loss(), budget=budget, grads=grads)
        small = slim(model, result.head_mask, result.neuron_mask)
        jax.block_until_ready(jax.tree.leaves(small))
        wall = time.perf_counter() - t0 + (t_load if grads is None else 0.0)
        if grads is None:
            wall_first = wall
        grads = result.grads
        name = f"flops {budget:g}"
        models[name] = small
        rows.append(
            {
                "variant": name,
                "flops": result.flops,
                "layer_heads": list(small.cfg.layer_heads),
                "layer_ffn": list(small.cfg.layer_ffn),
                "cosine": float(np.mean(np.sum(embed_sentences(small, held) * dense_emb, -1))),
                "probe_accuracy": probe(small),
                "phase_seconds": result.seconds,
                "pipeline_seconds": wall,
                "tune_skipped": result.tune_report.skipped(),
            }
        )
    # latency: interleave the variants, median over rounds
    times = {k: [] for k in models}
    for _ in range(args.rounds):
        for k, m in models.items():
            times[k].append(model_latency(m, 32, 128, repeats=3))
    for row in rows:
        row["latency_ms"] = 1e3 * float(np.median(times[row["variant"]]))
        row["speedup"] = float(np.median(times["dense"]) / np.median(times[row["variant"]]))

    print(machine_line())
    print(
        f"samples: {args.num_samples} KJV verses (mean {sum(len(x) for x in ids[: args.num_samples]) / args.num_samples:.1f} tokens); "
        "held-out: 512 verses; probe: 6000/2000 movie snippets"
    )
    print(
        "| variant | FLOPs | cosine to dense | probe acc | latency 32x128 (ms) | speedup | pipeline s (fisher/search/rearrange/tune) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ph = r.get("phase_seconds")
        phases = (
            "-"
            if ph is None
            else (
                f"{r['pipeline_seconds']:.0f} ({ph['fisher']:.0f}/{ph['search']:.2f}/{ph['rearrange']:.1f}/{ph['tune']:.0f})"
            )
        )
        print(
            f"| {r['variant']} | {r['flops']:.3f} | {r['cosine']:.4f} | {r['probe_accuracy']:.4f} | "
            f"{r['latency_ms']:.1f} | {r['speedup']:.2f}x | {phases} |"
        )
    print(f"first budget end to end (load + Fisher + search + rearrange + tune + slim): {wall_first:.0f} s")
    write_results(args.out, "prune_minilm", {"rows": rows, "first_budget_seconds": wall_first})


if __name__ == "__main__":
    main()
