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
or ``--tokenizer-from``). An existing output folder is only replaced with ``--overwrite``, and only
once the new one is complete (it is written next to it and renamed into place). Exit status
(:mod:`jaxslim.cli.errors`): 0 on success, 1 when ``check`` exceeds ``--rtol`` (or ``--atol``), 2 on
bad input, with a one-line message (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxslim.cli.errors import JobFailed, debug_requested, positive_float, run_command
from jaxslim.config import DTYPES
from jaxslim.convert import check, failures, format_report, load_hf, load_jaxslim, save_hf, save_jaxslim
from jaxslim.convert.check import DEFAULT_RTOL
from jaxslim.paths import absolute, output_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxslim-convert",
        description="Hugging Face checkpoints to jaxslim and back, and a logit check.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jax", help="Hugging Face directory -> jaxslim directory")
    p.add_argument("src", type=absolute, help="Hugging Face directory (config.json + safetensors)")
    p.add_argument("dst", type=absolute, help="output directory")
    p.add_argument("--unscanned", action="store_true", help="keep one block per layer (no layers axis)")
    p.add_argument("--param-dtype", choices=DTYPES, default="float32", help="storage dtype of the weights")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the folder dst (the old one is kept until the new one is complete)",
    )
    p = sub.add_parser("to-hf", help="jaxslim directory -> Hugging Face directory")
    p.add_argument("src", type=absolute, help="jaxslim directory (written by to-jax)")
    p.add_argument("dst", type=absolute, help="output directory")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="dtype of the written tensors")
    p.add_argument(
        "--max-shard-gb", type=positive_float, default=5.0, help="largest safetensors shard, in GiB"
    )
    p.add_argument(
        "--tokenizer-from",
        default=None,
        help="directory whose tokenizer files and generation_config.json are copied (default: those "
        "saved with the jaxslim checkpoint)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the folder dst (the old one is kept until the new one is complete)",
    )
    p = sub.add_parser("check", help="compare the PyTorch model and jaxslim on the same random tokens")
    p.add_argument("src", type=absolute, help="Hugging Face directory")
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
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(argv)
    return run_command("jaxslim-convert", lambda: _run(args), debug=debug)


def _run(args) -> int:
    if args.command == "to-jax":
        model = load_hf(args.src, scan_layers=not args.unscanned, param_dtype=args.param_dtype)
        # written next to dst and renamed into place: an interrupted run leaves the old output whole
        with output_dir(args.dst, overwrite=args.overwrite) as tmp:
            save_jaxslim(model, tmp)
        cfg = model.cfg
        print(f"wrote {args.dst} ({cfg.arch}, {cfg.n_layers} layers, {cfg.param_dtype})")
    elif args.command == "to-hf":
        model = load_jaxslim(args.src)
        with output_dir(args.dst, overwrite=args.overwrite) as tmp:
            save_hf(
                model,
                tmp,
                dtype=args.dtype,
                max_shard_bytes=int(args.max_shard_gb * 1024**3),
                source=args.tokenizer_from,
            )
        print(f"wrote {args.dst}")
    else:
        result = check(args.src, batch=args.batch, length=args.length, seed=args.seed, fp64=args.fp64)
        print(format_report(result))
        failed = failures(result, rtol=args.rtol or None, atol=args.atol)
        if failed:
            raise JobFailed("; ".join(failed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
