"""``jaxslim-data``: tokenize a corpus once into token shards (``prepare``), check them (``verify``).

Usage::

    jaxslim-data prepare 'corpus/**/*.jsonl' books/ --out data/web --vocab-size 32768
    jaxslim-data prepare shakespeare --out data/shakespeare --tokenizer runs/a/tokenizer.json
    jaxslim-data verify data/web
    jaxslim-train gpt2_small --data.manifest data/web

``prepare`` runs again with the same arguments resumes an interrupted run (finished units are
kept) or returns at once when the data is complete. Exit status: 0 on success, 1 when the job
itself fails (a worker died, ``verify`` found a corrupt shard), 2 on bad input or environment
(no such input, an unreadable file, an output directory holding other data, a filesystem error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

PROG = "jaxslim-data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Prepare token shards for training at scale.")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser(
        "prepare",
        help="tokenize inputs into sharded token files and a manifest",
        description="Tokenize inputs once into train / val token shards plus manifest.json.",
    )
    pr.add_argument(
        "inputs",
        nargs="+",
        help="files (.txt: one document each; .jsonl/.json: one per line; .parquet: one per row), "
        "folders, globs (quote them; ** allowed), embedded corpora (shakespeare, kjv) or hf:owner/name",
    )
    pr.add_argument("--out", required=True, help="output dataset directory (created)")
    pr.add_argument("--tokenizer", help="a tokenizer.json (or its folder); default: train a byte-level BPE")
    pr.add_argument("--vocab-size", type=int, default=8192, help="size of the trained BPE (default 8192)")
    pr.add_argument(
        "--bpe-sample-mb",
        type=float,
        default=64,
        help="MB of training text the BPE is trained on (default 64)",
    )
    pr.add_argument("--text-field", default="text", help="jsonl field / parquet column of the text")
    pr.add_argument(
        "--val-fraction", type=float, default=0.01, help="expected share of documents held out (default 0.01)"
    )
    pr.add_argument("--split-seed", type=int, default=0, help="key of the per-document split hash")
    pr.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    pr.add_argument(
        "--unit-mb", type=float, default=64, help="MB of input per work unit and shard (default 64)"
    )
    pr.add_argument("--cache-dir", help="data cache for embedded corpora and hub datasets")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    ve = sub.add_parser(
        "verify", help="hash every shard against the manifest", description="Hash every shard."
    )
    ve.add_argument("dataset", help="the dataset directory or its manifest.json")
    return p


def _prepare(args) -> int:
    from jaxslim.data.prepare import prepare

    if args.vocab_size < 259 or args.vocab_size > 1 << 20:
        raise ValueError(f"--vocab-size must be in [259, {1 << 20}], got {args.vocab_size}")
    if args.bpe_sample_mb <= 0 or args.unit_mb <= 0:
        raise ValueError("--bpe-sample-mb and --unit-mb must be positive")
    t = time.perf_counter()
    m = prepare(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        bpe_sample_bytes=int(args.bpe_sample_mb * (1 << 20)),
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        workers=args.workers,
        unit_bytes=int(args.unit_mb * (1 << 20)),
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t
    info = m.raw.get("prepare", {})
    tokens = m.tokens("train") + m.tokens("val")
    print(
        f"prepared {m.path}: train {m.documents('train'):,} documents / {m.tokens('train'):,} tokens in "
        f"{len(m.splits['train'])} shards, val {m.documents('val'):,} documents / {m.tokens('val'):,} tokens; "
        f"tokenizer sha256 {m.tokenizer_sha256[:16]}, vocab {m.vocab_size}"
    )
    if info.get("tokenize_s"):
        reused = info.get("units_reused", 0)
        print(
            f"{info['units']} units ({reused} reused), {info['workers']} workers, {seconds:.1f} s, "
            f"{tokens / max(seconds, 1e-9):,.0f} tokens/s"
        )
    return 0


def _verify(args) -> int:
    from jaxslim.data.shards import PreparedDataError, read_manifest, verify_shards

    m = read_manifest(args.dataset)
    try:
        verify_shards(m)
    except PreparedDataError as e:
        print(f"{PROG}: error: verify failed: {_one_line(e)}", file=sys.stderr)
        return 1
    n = sum(len(s) for s in m.splits.values())
    print(f"{m.path}: {n} shards, {m.tokens('train') + m.tokens('val'):,} tokens, all sha256 match")
    return 0


def _one_line(e: BaseException) -> str:
    return "; ".join(line.strip() for line in str(e).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    from jaxslim.data.corpora import CorpusError

    logging.basicConfig(
        level=os.environ.get("JAXSLIM_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # argparse printed the usage and what is wrong, or --help
        return e.code if isinstance(e.code, int) else 2
    try:
        return _prepare(args) if args.command == "prepare" else _verify(args)
    except (CorpusError, OSError, ValueError) as e:
        # bad input or environment: a missing input, an unreadable or damaged file, a directory
        # holding other data, a filesystem error
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
