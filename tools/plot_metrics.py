"""Draws loss curves of one or several runs from their metrics.jsonl files into a PNG.

Usage::

    python tools/plot_metrics.py runs/a runs/b --keys loss eval_loss --out curves.png

Each positional argument is a run directory (or a metrics.jsonl path).
"""

from __future__ import annotations

import argparse
import pathlib

from jaxslim.training.plots import plot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=pathlib.Path)
    p.add_argument("--keys", nargs="+", default=["loss", "eval_loss"])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("loss_curves.png"))
    p.add_argument(
        "--x", default="step", help='the x axis: "step" or a logged metric such as "flops" (log-log)'
    )
    args = p.parse_args(argv)
    print(plot(args.runs, args.keys, args.out, x=args.x))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
