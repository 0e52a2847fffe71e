"""``jaxslim-prune``: retraining-free structured pruning of a model to a FLOPs or latency budget.

Loads a Hugging Face directory, a jaxslim directory or the embedded all-MiniLM-L6-v2, draws sample
sentences, prunes heads and FFN neurons label-free (distillation of the dense model's hidden states)
or with the causal-LM loss for decoders, slims the model physically, measures dense vs slim latency
and writes, per budget, ``<out>/flops-<budget>/`` (the slim model as a jaxslim checkpoint, the masks
and ``report.json``) plus ``<out>/summary.json`` and, for several budgets, ``<out>/quality_vs_flops.png``.

Example:
    jaxslim-prune --model minilm --flops 0.5 0.6 --samples kjv --out runs/prune
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jaxslim.cli.errors import debug_requested, positive_int, run_command
from jaxslim.paths import absolute, output_dir

if TYPE_CHECKING:  # the command imports jax and the pruning code only once it runs
    from jaxslim.prune.fisher import MaskLoss


def _load_model(spec: str):
    from jaxslim.cli.demo import find_minilm
    from jaxslim.convert.native import load_model

    path = find_minilm() if spec == "minilm" else absolute(spec)
    if spec != "minilm" and not path.is_dir():
        raise FileNotFoundError(f"--model {spec!r} is neither 'minilm' nor a model directory")
    tokenizer = path / "tokenizer.json"
    return load_model(path), path, tokenizer if tokenizer.is_file() else None


def _plot(rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["flops"] for r in rows], [r["cosine"] for r in rows], "o-")
    ax.set_xlabel("FLOPs kept (fraction of dense)")
    ax.set_ylabel("cosine similarity to dense")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jaxslim-prune", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="minilm", help="'minilm' (embedded), a Hugging Face or jaxslim directory"
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, nargs="+", help="kept FLOPs fraction(s) in (0, 1]")
    budget.add_argument("--latency", type=float, nargs="+", help="kept latency fraction(s) in (0, 1]")
    p.add_argument(
        "--samples", default="kjv", help="embedded corpus (kjv, shakespeare, vader), .txt file or hf:name"
    )
    p.add_argument("--num-samples", type=positive_int, default=2048)
    p.add_argument(
        "--held-out", type=positive_int, default=512, help="held-out sentences for the quality metric"
    )
    p.add_argument("--max-len", type=positive_int, default=128)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument(
        "--round-to", type=positive_int, default=1, help="FFN widths a multiple of this (FLOPs budgets)"
    )
    p.add_argument("--no-rearrange", action="store_true")
    p.add_argument("--no-tune", action="store_true")
    p.add_argument("--teacher", choices=("assistant", "dense"), default="assistant")
    p.add_argument("--latency-batch", type=positive_int, default=32)
    p.add_argument("--latency-seq", type=positive_int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--export-hf",
        action="store_true",
        help="also write a Hugging Face checkpoint per budget (slim where the format can express it, "
        "else the masked dense weights; see <budget>/hf/jaxslim_export.json)",
    )
    p.add_argument("--out", type=absolute, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict]:
    from tqdm.auto import tqdm

    from jaxslim.convert import save_jaxslim
    from jaxslim.prune import (
        bucket_batches,
        distill_loss,
        embed_sentences,
        lm_loss,
        load_sentences,
        measure_latency,
        model_latency,
        prune_post_training,
        slim,
        tokenize,
    )
    from jaxslim.prune.search import check_budget
    from jaxslim.tree import count_parameters

    metric: Literal["flops", "latency"] = "flops" if args.flops else "latency"
    budgets = [check_budget(b, f"--{metric}") for b in (args.flops or args.latency)]
    out = args.out
    existing = [out / f"{metric}-{b:g}" for b in budgets if (out / f"{metric}-{b:g}").exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it (nothing was written)")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model, path, tokenizer = _load_model(args.model)
    if tokenizer is None:
        raise FileNotFoundError(f"{path} has no tokenizer.json to tokenize the sample sentences")
    seconds["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sents = load_sentences(args.samples, args.num_samples + args.held_out, seed=args.seed)
    if len(sents) < args.num_samples + args.held_out:
        raise ValueError(f"{args.samples!r} has only {len(sents)} usable sentences")
    ids = tokenize(tokenizer, sents, args.max_len)
    causal = model.cfg.causal
    if causal:
        sample = [
            {"tokens": b["tokens"]} for b in bucket_batches([x + [x[-1]] for x in ids[: args.num_samples]])
        ]
        loss: MaskLoss = lm_loss
    else:
        sample = bucket_batches(ids[: args.num_samples], batch_size=args.batch_size)
        loss = distill_loss(seed=args.seed)
    held = bucket_batches(ids[args.num_samples :], batch_size=args.batch_size)
    seconds["data"] = time.perf_counter() - t0
    latency_model = None
    if metric == "latency":
        t0 = time.perf_counter()
        print(f"measuring latency tables at {args.latency_batch}x{args.latency_seq} ...", file=sys.stderr)
        latency_model = measure_latency(model.cfg, batch=args.latency_batch, seq_len=args.latency_seq)
        seconds["latency_tables"] = time.perf_counter() - t0
    dense_emb = embed_sentences(model, held)
    dense_latency = model_latency(model, args.latency_batch, args.latency_seq)
    rows, grads = [], None
    for budget in budgets:
        bar = tqdm(total=4, desc=f"{metric} {budget:g}", leave=False)
        result = prune_post_training(
            model,
            sample,
            loss,
            budget=budget,
            metric=metric,
            latency_model=latency_model,
            rearrange=not args.no_rearrange,
            tune=not args.no_tune,
            teacher=args.teacher,
            round_to=args.round_to,
            grads=grads,
            progress=functools.partial(_advance, bar),
        )
        bar.close()
        grads = result.grads
        small = slim(model, result.head_mask, result.neuron_mask)
        emb = embed_sentences(small, held)
        slim_latency = model_latency(small, args.latency_batch, args.latency_seq)
        # written next to its final place and renamed there once complete (old output kept until then)
        with output_dir(out / f"{metric}-{budget:g}", overwrite=args.overwrite) as target:
            save_jaxslim(small, target / "model")
            np.savez(target / "masks.npz", head_mask=result.head_mask, neuron_mask=result.neuron_mask)
            hf_export = None
            if args.export_hf:
                from jaxslim.prune.export import export_hf

                hf_export = export_hf(model, result.head_mask, result.neuron_mask, target / "hf")
            row = {
                "budget": budget,
                "metric": metric,
                "flops": result.flops,
                "predicted_latency": result.latency,
                "params_dense": count_parameters(model),
                "params_slim": count_parameters(small),
                "layer_heads": [small.cfg.heads_in(i) for i in range(small.cfg.n_layers)],
                "layer_ffn": [small.cfg.ffn_in(i) for i in range(small.cfg.n_layers)],
                "cosine": float(np.mean(np.sum(emb * dense_emb, -1))),
                "latency_dense_s": dense_latency,
                "latency_slim_s": slim_latency,
                "speedup": dense_latency / slim_latency,
                "seconds": {**seconds, **result.seconds},
                "seq_len": result.seq_len,
                "tune_skipped": [] if result.tune_report is None else result.tune_report.skipped(),
                "hf_export": None if hf_export is None else hf_export["format"],
            }
            (target / "report.json").write_text(json.dumps(row, indent=1))
        rows.append(row)
    _write_atomic(out / "summary.json", json.dumps(rows, indent=1))
    if len(rows) > 1:
        _plot(rows, out / "quality_vs_flops.png")
    return rows


def _advance(bar: Any, phase: str) -> None:
    """Shows ``phase`` on the progress bar and counts it done."""
    bar.set_postfix_str(phase)
    bar.update(1)


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)


def table(rows: list[dict]) -> str:
    head = "| budget | FLOPs | params dense -> slim | cosine | latency dense -> slim (ms) | speedup | fisher/search/rearrange/tune s |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['metric']} {r['budget']:g} | {r['flops']:.3f} | {r['params_dense'] / 1e6:.2f}M -> "
            f"{r['params_slim'] / 1e6:.2f}M | {r['cosine']:.4f} | {r['latency_dense_s'] * 1e3:.1f} -> "
            f"{r['latency_slim_s'] * 1e3:.1f} | {r['speedup']:.2f}x | {s['fisher']:.1f}/{s['search']:.2f}/"
            f"{s['rearrange']:.1f}/{s['tune']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Runs ``jaxslim-prune``; the exit status follows :mod:`jaxslim.cli.errors`."""
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = parse(argv)

    def body() -> int:
        rows = run(args)
        print(table(rows))
        print(f"\nwritten to {args.out}/")
        return 0

    return run_command("jaxslim-prune", body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
