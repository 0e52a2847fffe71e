"""Staged training vs training from scratch at equal data order: FLOPs to the same validation loss.

The target is the ``staged_shakespeare`` preset's final model (GPT-2, 4 layers x 256, 4 heads,
FFN 1024, 2048-token BPE, sequences of 128, batch 16) on the embedded Shakespeare corpus. Runs:

* ``scratch``: the target trained for ``--steps`` steps (warm-up 50, cosine to 10%).
* ``pilot <op>``: the small model alone (half width and/or half depth) on the same schedule; the
  slope rule of staged training (``jaxslim.grow.planner.slope_growth_index``) applied to its
  validation loss against training FLOPs gives the growth step, and the growth step divided by the
  operator constant the restart step.
* ``staged <op>``: the small model trained to the growth step, grown (whole state: parameters,
  Adam moments, schedule) and trained on until the schedule ends.

Reported: the scratch run's final validation loss, the FLOPs each run needs to reach it (linear
interpolation between evaluations), the saving in percent, the growth and restart steps, the
wall-clock seconds; a loss-vs-FLOPs plot of all runs. FLOPs are counted the same way for every
run (``jaxslim.grow.planner.train_flops_per_token``: 6 x multiply-accumulates of the matrices, the
attention scores and the output head). The evaluation uses the first ``--eval-batches`` batches of
the validation split.

Prints a table and writes ``benchmarks/results/staged_training.json`` and
``benchmarks/results/staged_training.png``.

    python benchmarks/staged_training.py [--steps 600] [--ops depth_width width depth] [--workdir d --reuse]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import RESULTS, machine_line, write_results  # noqa: E402

OPS = {"width": dict(width=2), "depth": dict(depth=2), "depth_width": dict(width=2, depth=2)}


def _evals(workdir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    points = sorted({r["step"]: (r["flops"], r["eval_loss"]) for r in rows if "eval_loss" in r}.items())
    flops, loss = zip(*(p for _, p in points), strict=True)
    return np.asarray(flops), np.asarray(loss)


def flops_to_reach(flops: np.ndarray, loss: np.ndarray, target: float, after: float = 0.0) -> float | None:
    """The FLOPs at which ``loss`` first reaches ``target`` (past ``after`` FLOPs), interpolated
    linearly between evaluations; ``None`` if it never does."""
    for i in range(1, len(loss)):
        if flops[i] > after and loss[i] <= target:
            if loss[i - 1] <= target or flops[i - 1] < after:
                return float(flops[i])
            t = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
            return float(flops[i - 1] + t * (flops[i] - flops[i - 1]))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--ops", nargs="+", default=["depth_width"], choices=sorted(OPS))
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--workdir", type=pathlib.Path, default=None)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    ap.add_argument("--reuse", action="store_true", help="keep the finished runs already in --workdir")
    args = ap.parse_args()

    from jaxslim.cli.presets import load_preset
    from jaxslim.config import CheckpointConfig, StageConfig
    from jaxslim.data import TextData
    from jaxslim.grow.planner import CONSTANTS, THRESHOLDS, restart_step, slope_growth_index
    from jaxslim.grow.stages import start_model
    from jaxslim.training import train
    from jaxslim.training.plots import plot

    print(machine_line())
    root = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="staged-"))
    base = load_preset("staged_shakespeare").replace(
        steps=args.steps,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        sample_tokens=0,
        tensorboard=False,
        checkpoint=CheckpointConfig(every=0),
        stages=(),
    )
    data = TextData(base.data)

    def run(name, cfg):
        wall = root / name / "wall_s.json"
        if args.reuse and wall.exists():  # a finished run of an earlier invocation
            return json.loads(wall.read_text())
        t0 = time.perf_counter()
        train(cfg.replace(workdir=str(root / name)), data=data, progress=False)
        seconds = time.perf_counter() - t0
        wall.write_text(json.dumps(seconds))
        return seconds

    rows, runs = [], {}
    wall = run("scratch", base)
    flops, loss = _evals(root / "scratch")
    target = float(loss[-1])
    runs["scratch"] = root / "scratch"
    rows.append(
        {
            "run": "scratch",
            "flops_to_target": float(flops[-1]),
            "saving": 0.0,
            "wall_s": wall,
            "steps_total": args.steps,
        }
    )
    print(f"scratch: final validation loss {target:.4f} at {flops[-1]:.3e} FLOPs ({wall:.0f} s)")
    for op in args.ops:
        stage = StageConfig(**OPS[op], rewarm_steps=20)
        small = start_model(base.model, (stage,))
        wall_pilot = run(f"pilot-{op}", base.replace(model=small))
        pf, pl = _evals(root / f"pilot-{op}")
        i = slope_growth_index(pf, pl, THRESHOLDS[op])
        if i is None:
            grow, note = args.steps // 3, "slope rule never fired: grown at steps/3"
        else:
            grow, note = int((i + 1) * args.eval_every), f"slope rule at evaluation {i + 1}"
        restart = restart_step(grow, op)
        print(f"pilot {op}: grow at step {grow} ({note}), restart at schedule step {restart}")
        staged_cfg = base.replace(
            stages=(StageConfig(**OPS[op], at_step=grow, restart_step=restart, rewarm_steps=20),)
        )
        wall_staged = run(f"staged-{op}", staged_cfg)
        sf, sl = _evals(root / f"staged-{op}")
        reach = flops_to_reach(sf, sl, target)
        runs[f"pilot {op}"] = root / f"pilot-{op}"
        runs[f"staged {op}"] = root / f"staged-{op}"
        rows.append(
            {
                "run": f"staged {op}",
                "grow_step": grow,
                "restart_step": restart,
                "constant": CONSTANTS[op],
                "planner": note,
                "final_eval_loss": float(sl[-1]),
                "flops_to_target": reach,
                "flops_total": float(sf[-1]),
                "steps_total": staged_cfg.steps - (restart + 1 - grow),
                "pilot_final_eval_loss": float(pl[-1]),
                "pilot_flops_to_target": flops_to_reach(pf, pl, target),
                "saving": None if reach is None else 1 - reach / float(flops[-1]),
                "wall_s": wall_staged,
                "pilot_wall_s": wall_pilot,
            }
        )

    print(f"\ntarget: the scratch run's final validation loss {target:.4f} ({args.steps} steps)")
    print(
        "| run | grow at | restart at | steps | final val loss | FLOPs to target | saving | small model alone | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reach = "not reached" if r["flops_to_target"] is None else f"{r['flops_to_target']:.3e}"
        saving = "-" if r["saving"] is None else f"{100 * r['saving']:+.1f}%"
        final = r.get("final_eval_loss", target)
        alone = "-" if "pilot_final_eval_loss" not in r else f"{r['pilot_final_eval_loss']:.4f}"
        print(
            f"| {r['run']} | {r.get('grow_step', '-')} | {r.get('restart_step', '-')} | {r['steps_total']} | "
            f"{final:.4f} | {reach} | {saving} | {alone} | {r['wall_s']:.0f} |"
        )
    figure = plot(list(runs.values()), ["eval_loss"], args.out / "staged_training.png", x="flops")
    path = write_results(
        args.out,
        "staged_training",
        {"steps": args.steps, "target_loss": target, "rows": rows, "plot": figure.name},
    )
    print(f"wrote {path} and {figure}")


if __name__ == "__main__":
    main()
