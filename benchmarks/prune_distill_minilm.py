"""Prune -> distill beyond post-training pruning: all-MiniLM-L6-v2 at about 35% of its FLOPs.

Compared at (about) the same FLOPs:

* ``post-training``: Kwon et al. label-free (heads and neurons only, no retraining) at the FLOPs
  the distilled student ends at;
* ``prune -> distill``: SlimSAM-style alternate slimming (:func:`jaxslim.prune.prune_distill`):
  residual channels kept ``--channel-keep``, distillation, heads and neurons to ``--inner-budget``
  of the narrowed model, distillation; ``--steps`` AdamW steps per distillation phase on KJV
  verses (the same sentences give the importance scores).

Reported: FLOPs (attention + FFN MACs at the samples' mean length), parameters, cosine similarity
of mean-pooled sentence embeddings to the dense model on 512 held-out verses (for the channel-pruned
student: to the dense embedding restricted to the kept channels, which is what it was distilled
towards), accuracy of a logistic-regression probe on the VADER movie snippets (dimension-agnostic),
CPU latency at batch 32 x 128 (interleaved, median) and wall time.

Prints a table and writes ``benchmarks/results/prune_distill_minilm.json``.

    python benchmarks/prune_distill_minilm.py [--channel-keep 0.75] [--inner-budget 0.5] [--steps 400]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pooled(model, batches, channels=None) -> np.ndarray:
    """Mean-pooled hidden states (``index`` order), optionally restricted to ``channels``, L2-normalised."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens, mask):
        h = nnx.merge(graphdef, state)(tokens, attention_mask=mask).hidden
        m = mask[..., None].astype(h.dtype)
        return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    out = {}
    for b in batches:
        e = np.asarray(run(state, b["tokens"], b["attention_mask"]))
        out.update(zip(b["index"].tolist(), e, strict=True))
    e = np.stack([out[i] for i in sorted(out)])
    if channels is not None:
        e = e[:, channels]
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channel-keep", type=float, default=0.75)
    parser.add_argument("--inner-budget", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--num-samples", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()

    from common import machine_line, probe_accuracy, review_probe_data, write_results

    from jaxslim.cli.demo import find_minilm
    from jaxslim.convert.native import load_model
    from jaxslim.prune import (
        bucket_batches,
        distill_loss,
        load_sentences,
        model_latency,
        prune_distill,
        prune_post_training,
        slim,
        tokenize,
    )
    from jaxslim.prune.distill import model_macs
    from jaxslim.prune.samples import mean_length
    from jaxslim.tree import count_parameters

    _ = find_minilm()
    model, tok = load_model(_), _ / "tokenizer.json"
    sents = load_sentences("kjv", args.num_samples + 512, seed=0)
    ids = tokenize(tok, sents, 128)
    sample = bucket_batches(ids[: args.num_samples])
    held = bucket_batches(ids[args.num_samples :])
    review_batches, labels = review_probe_data(tok)

    def probe(m):
        return probe_accuracy(pooled(m, review_batches), labels)

    seq = mean_length(sample)
    dense_macs = model_macs(model.cfg, seq)
    rows, models = [], {"dense": model}

    def row(name, m, cosine, seconds, **extra):
        models[name] = m
        rows.append(
            {
                "variant": name,
                "d_model": m.cfg.d_model,
                "flops": model_macs(m.cfg, seq) / dense_macs,
                "params": count_parameters(m),
                "cosine": cosine,
                "probe_accuracy": probe(m),
                "seconds": seconds,
                **extra,
            }
        )

    row("dense", model, 1.0, 0.0)
    dense_held = pooled(model, held)

    t0 = time.perf_counter()
    r = prune_distill(
        model,
        sample,
        channel_keep=args.channel_keep,
        inner_budget=args.inner_budget,
        steps=args.steps,
        lr=args.lr,
        progress=print,
    )
    wall = time.perf_counter() - t0
    student_cos = float(np.mean(np.sum(pooled(r.model, held) * pooled(model, held, r.channels), -1)))

    t0 = time.perf_counter()
    pt = prune_post_training(model, sample, distill_loss(), budget=r.flops)
    pt_model = slim(model, pt.head_mask, pt.neuron_mask)
    pt_wall = time.perf_counter() - t0
    pt_cos = float(np.mean(np.sum(pooled(pt_model, held) * dense_held, -1)))
    row(f"post-training (flops {r.flops:.3f})", pt_model, pt_cos, pt_wall, phase_seconds=pt.seconds)
    row(
        f"prune -> distill (channels {args.channel_keep:g}, inner {args.inner_budget:g})",
        r.model,
        student_cos,
        wall,
        phase_seconds=r.seconds,
        distill_loss_first_last={k: [v[0], v[-1]] for k, v in r.losses.items()},
        layer_heads=list(r.model.cfg.layer_heads),
        layer_ffn=list(r.model.cfg.layer_ffn),
    )

    times = {k: [] for k in models}
    for _ in range(args.rounds):
        for k, m in models.items():
            times[k].append(model_latency(m, 32, 128, repeats=3))
    for x in rows:
        x["latency_ms"] = 1e3 * float(np.median(times[x["variant"]]))
        x["speedup"] = float(np.median(times["dense"]) / np.median(times[x["variant"]]))

    print(f"{machine_line()}; {args.num_samples} KJV verses, {args.steps} distillation steps per phase")
    print(
        "| variant | d_model | FLOPs | params | cosine | probe acc | latency 32x128 ms | speedup | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(
            f"| {x['variant']} | {x['d_model']} | {x['flops']:.3f} | {x['params'] / 1e6:.2f}M | {x['cosine']:.4f} | "
            f"{x['probe_accuracy']:.4f} | {x['latency_ms']:.1f} | {x['speedup']:.2f}x | {x['seconds']:.0f} |"
        )
    write_results(args.out, "prune_distill_minilm", {"rows": rows})


if __name__ == "__main__":
    main()
