"""``jaxslim-convert``: Hugging Face checkpoints to jaxslim and back, and a logit check.

Usage::

    jaxslim-convert to-jax HF_DIR OUT_DIR [--unscanned]   # HF safetensors -> jaxslim directory
    jaxslim-convert to-hf JAXSLIM_DIR OUT_DIR               # jaxslim directory -> HF safetensors
    jaxslim-convert check HF_DIR [--length 16]              # PyTorch vs jaxslim differences
"""

from __future__ import annotations

import argparse
import sys

from jaxslim.convert import check, load_hf, load_jaxslim, save_hf, save_jaxslim


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxslim-convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-jax", help="Hugging Face directory -> jaxslim directory")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--unscanned", action="store_true", help="keep one block per layer")
    p = sub.add_parser("to-hf", help="jaxslim directory -> Hugging Face directory")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("check", help="compare the PyTorch model and jaxslim on the same tokens")
    p.add_argument("src")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        if args.command == "to-jax":
            model = load_hf(args.src, scan_layers=not args.unscanned)
            print(f"wrote {save_jaxslim(model, args.dst)} ({model.cfg.arch}, {model.cfg.n_layers} layers)")
        elif args.command == "to-hf":
            print(f"wrote {save_hf(load_jaxslim(args.src), args.dst)}")
        else:
            result = check(args.src, batch=args.batch, length=args.length)
            print("| output | max abs diff | max rel diff |\n|---|---|---|")
            for name, d in result.items():
                print(f"| {name} | {d['max_abs']:.3e} | {d['max_rel']:.3e} |")
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxslim-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
