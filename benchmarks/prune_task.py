"""Post-training pruning with a task loss: a MiniLM sentiment classifier pruned to 60/50/40% FLOPs.

The embedded all-MiniLM-L6-v2 with a linear head on the first token is fine-tuned (AdamW, through
the training step of :mod:`jaxslim.training`) on the VADER movie-review snippets (sign of the
human valence, zero-valence rows dropped; 6,000 train / 2,000 test / 2,048 pruning samples drawn
from the training rows). It is then pruned without retraining with the classification loss:
diagonal Fisher of the mask gradients, FLOPs search, and with / without mask rearrangement and
least-squares tuning. Reported: test accuracy of each slim model vs the fine-tuned dense model.

Prints a table and writes ``benchmarks/results/prune_task.json``.

    python benchmarks/prune_task.py [--budgets 0.6 0.5 0.4] [--epochs 2]
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
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.5, 0.4])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--num-samples", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=6000, help="fine-tuning sentences (<= 6000)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    from common import machine_line, write_results
    from flax import nnx

    from jaxslim.cli.demo import find_minilm
    from jaxslim.config import MeshConfig, OptimConfig
    from jaxslim.convert.native import load_model
    from jaxslim.data import labelled_sentences
    from jaxslim.engine.state import create_train_state, merge_model
    from jaxslim.engine.step import make_train_step
    from jaxslim.models import Transformer
    from jaxslim.optim import build_optimizer
    from jaxslim.prune import (
        bucket_batches,
        classification_loss,
        prune_post_training,
        slim,
        tokenize,
    )
    from jaxslim.sharding import make_mesh

    _ = find_minilm()
    encoder, tok = load_model(_), _ / "tokenizer.json"
    rows = [(t, v) for t, v in labelled_sentences() if v != 0]
    order = np.random.default_rng(0).permutation(len(rows))[:8000]
    ids = tokenize(tok, [rows[i][0] for i in order], args.max_len)
    labels = np.array([int(rows[i][1] > 0) for i in order], np.int32)
    n = min(args.train_size, 6000)
    train_ids, train_y, test_ids, test_y = ids[:n], labels[:n], ids[6000:], labels[6000:]

    class Classifier(nnx.Module):
        def __init__(self, encoder, *, rngs):
            self.encoder = encoder
            self.head = nnx.Linear(encoder.cfg.d_model, 2, rngs=rngs)

        def __call__(self, tokens, attention_mask=None, **masks):
            return self.head(self.encoder(tokens, attention_mask=attention_mask, **masks).hidden[:, 0])

    def objective(model, batch, rng):
        logits = model(batch["tokens"], attention_mask=batch["attention_mask"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, None

    # fine-tune the dense classifier
    t0 = time.perf_counter()
    mesh_cfg = MeshConfig(data=-1)
    mesh, rules = make_mesh(mesh_cfg), mesh_cfg.rules
    train_batches = bucket_batches(train_ids, labels=train_y, batch_size=32)
    steps = args.epochs * len(train_batches)
    tx = build_optimizer(OptimConfig(lr=args.lr, warmup_steps=steps // 10, weight_decay=0.01), steps)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        cfg = encoder.cfg
        state, setup = create_train_state(
            lambda: Classifier(Transformer(cfg, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0)), tx, mesh, rules
        )
        _, params, _ = nnx.split(Classifier(encoder, rngs=nnx.Rngs(0)), nnx.Param, ...)
        state = state._replace(params=jax.device_put(params, setup.shardings.params))
        step_fn = make_train_step(setup, objective)
        rng = np.random.default_rng(1)
        for _epoch in range(args.epochs):
            for i in rng.permutation(len(train_batches)):
                b = train_batches[i]
                state, _ = step_fn(state, {k: b[k] for k in ("tokens", "attention_mask", "label")})
        model = merge_model(setup, state)
    finetune_s = time.perf_counter() - t0
    head_graph, head_state = nnx.split(model.head)
    dense = model.encoder

    test_batches = bucket_batches(test_ids, labels=test_y, batch_size=64)

    def accuracy(enc) -> float:
        graph, st = nnx.split(enc)

        @jax.jit
        def predict(st, tokens, mask):
            h = nnx.merge(graph, st)(tokens, attention_mask=mask).hidden[:, 0]
            return jnp.argmax(nnx.merge(head_graph, head_state)(h), -1)

        hits = sum(
            int(np.sum(np.asarray(predict(st, b["tokens"], b["attention_mask"])) == b["label"]))
            for b in test_batches
        )
        return hits / len(test_ids)

    sample = bucket_batches(train_ids[: args.num_samples], labels=train_y[: args.num_samples], batch_size=32)
    loss = classification_loss(lambda out: nnx.merge(head_graph, head_state)(out.hidden[:, 0]))
    table = [{"variant": "dense (fine-tuned)", "flops": 1.0, "accuracy": accuracy(dense)}]
    grads = None
    for budget in args.budgets:
        for full in (False, True):
            r = prune_post_training(
                dense, sample, loss, budget=budget, rearrange=full, tune=full, grads=grads
            )
            grads = r.grads
            table.append(
                {
                    "variant": f"flops {budget:g} " + ("+ rearrange + tune" if full else "mask search only"),
                    "budget": budget,
                    "rearrange_tune": full,
                    "flops": r.flops,
                    "accuracy": accuracy(slim(dense, r.head_mask, r.neuron_mask)),
                    "seconds": r.seconds,
                }
            )
    base = table[0]["accuracy"]
    for row in table:
        row["drop_points"] = 100 * (base - row["accuracy"])

    print(f"{machine_line()}; fine-tuning {steps} steps took {finetune_s:.0f} s")
    print(
        f"VADER movie snippets: 6000 train / 2000 test, {args.num_samples} pruning samples, max {args.max_len} tokens"
    )
    print("| variant | FLOPs | test accuracy | drop (points) | fisher/search/rearrange/tune s |")
    print("|---|---|---|---|---|")
    for r in table:
        s = r.get("seconds")
        ph = "-" if s is None else f"{s['fisher']:.0f}/{s['search']:.2f}/{s['rearrange']:.1f}/{s['tune']:.0f}"
        print(f"| {r['variant']} | {r['flops']:.3f} | {r['accuracy']:.4f} | {r['drop_points']:+.2f} | {ph} |")
    write_results(
        args.out, "prune_task", {"finetune_steps": steps, "finetune_seconds": finetune_s, "rows": table}
    )


if __name__ == "__main__":
    main()
