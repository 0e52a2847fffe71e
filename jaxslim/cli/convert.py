"""``jaxslim-convert``: Hugging Face checkpoints to jaxslim and back, and a logit check.

Usage::

    jaxslim-convert to-jax HF_DIR OUT_DIR [--unscanned] [--param-dtype bfloat16]
    jaxslim-convert to-hf JAXSLIM_DIR OUT_DIR [--dtype bfloat16] [--max-shard-gb 5]
    jaxslim-convert check HF_DIR [--batch 2] [--length 16] [--rtol 1e-4] [--atol A] [--fp64]

``to-jax`` writes ``OUT_DIR/jaxslim_config.json`` and ``OUT_DIR/params.safetensors`` (see
:mod:`jaxslim.convert.native`); ``to-hf`` writes ``config.json`` and safetensors that
``transformers``' ``from_pretrained`` loads; ``check`` prints the max absolute and relative
differences between the PyTorch model and jaxslim (it needs torch and transformers); the relative
one is the max absolute difference over the largest reference magnitude, so the default ``--rtol``
holds for real models whose logits reach ~40 and still catches a dropped bias or norm. ``to-hf``
copies the tokenizer files and ``generation_config.json`` along (from where the model was loaded,
or ``--tokenizer-from``). Existing outputs are only replaced with ``--overwrite``. Exit status: 0
on success, 1 when ``check`` exceeds ``--rtol`` (or ``--atol``), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxslim.config import DTYPES
from jaxslim.convert import check, failures, format_report, load_hf, load_jaxslim, save_hf, save_jaxslim
from jaxslim.convert.check import DEFAULT_RTOL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxslim-convert",
        description="Hugging Face checkpoints to jaxslim and back, and a logit check.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jax", help="Hugging Face directory -> jaxslim directory")
    p.add_argument("src", help="Hugging Face directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--unscanned", action="store_true", help="keep one block per layer (no layers axis)")
    p.add_argument("--param-dtype", choices=DTYPES, default="float32", help="storage dtype of the weights")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in dst")
    p = sub.add_parser("to-hf", help="jaxslim directory -> Hugging Face directory")
    p.add_argument("src", help="jaxslim directory (written by to-jax)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the written tensors")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GiB")
    p.add_argument(
        "--tokenizer-from",
        default=None,
        help="directory whose tokenizer files and generation_config.json are copied (default: those "
        "saved with the jaxslim checkpoint)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in dst")
    p = sub.add_parser("check", help="compare the PyTorch model and jaxslim on the same random tokens")
    p.add_argument("src", help="Hugging Face directory")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help="exit with status 1 if a max abs diff over the largest reference magnitude exceeds it "
        "(0 switches it off)",
    )
    p.add_argument("--atol", type=float, default=None, help="exit with status 1 if a max abs diff exceeds it")
    p.add_argument("--fp64", action="store_true", help="run the PyTorch reference in float64")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxslim-convert`` with ``argv`` (``sys.argv[1:]`` by default); returns the exit status.

    Example:
        >>> main(["to-jax", "all-MiniLM-L6-v2/", "minilm-jax/"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "to-jax":
            model = load_hf(args.src, scan_layers=not args.unscanned, param_dtype=args.param_dtype)
            out = save_jaxslim(model, args.dst, overwrite=args.overwrite)
            cfg = model.cfg
            print(f"wrote {out} ({cfg.arch}, {cfg.n_layers} layers, {cfg.param_dtype})")
        elif args.command == "to-hf":
            max_bytes = int(args.max_shard_gb * 1024**3)
            out = save_hf(
                load_jaxslim(args.src),
                args.dst,
                dtype=args.dtype,
                max_shard_bytes=max_bytes,
                overwrite=args.overwrite,
                source=args.tokenizer_from,
            )
            print(f"wrote {out}")
        else:
            result = check(args.src, batch=args.batch, length=args.length, seed=args.seed, fp64=args.fp64)
            print(format_report(result))
            failed = failures(result, rtol=args.rtol or None, atol=args.atol)
            if failed:
                print("jaxslim-convert: " + "; ".join(failed), file=sys.stderr)
                return 1
    except (ValueError, OSError) as e:  # bad input: a clear message, no traceback
        print(f"jaxslim-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
