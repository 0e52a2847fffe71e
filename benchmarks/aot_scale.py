"""Train steps at scale, compiled ahead of time for TPU topologies (libtpu, no TPU): per-chip HBM,
fits, collective bytes, roofline step time and MFU bound, compile time; beside MaxText's
configuration of the same model and topology (per-device batch and remat policy).

Usage (in the environment with libtpu, ``make aot``)::

    .venv-aot/bin/python benchmarks/aot_scale.py                 # every case (minutes each)
    .venv-aot/bin/python benchmarks/aot_scale.py llama2_7b       # the cases of one preset

Writes ``benchmarks/results/aot_scale.json``. The step time and MFU are roofline estimates (peak
FLOP/s and ICI bandwidth, perfect overlap), not measurements.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jaxslim.aot import compile_train_step, parse_topology  # noqa: E402
from jaxslim.cli.presets import load_preset  # noqa: E402

GIB = 2**30

# (preset, topology, model overrides, MaxText's configuration of the same run or a note)
CASES = [
    ("llama2_7b", "v5e-256", {}, "MaxText llama2_7b v5e-256: per_device_batch_size=4, save_qkv_proj"),
    ("llama2_7b", "v5e-256", {"remat_policy": "full"}, "(jaxslim with full remat)"),
    ("llama3_8b:2k", "v5e-256", {}, "1 x 2048 per chip"),
    ("llama3_8b", "v5e-256", {}, "1 x 8192 per chip (Llama 3's context)"),
    ("mixtral_8x7b", "v5p-128", {}, "2 x 4096 per chip, expert=8 x fsdp=8, capacity dispatch"),
]


def run(preset: str, topology: str, model_overrides: dict) -> dict:
    cfg = load_preset(preset)
    if model_overrides:
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(**model_overrides))
    report, _ = compile_train_step(cfg, parse_topology(topology))
    print(report.format(), flush=True)
    return report.to_json() | {"preset": preset, "remat_policy": cfg.model.remat_policy}


def main(argv: list[str]) -> None:
    cases = [c for c in CASES if not argv or c[0].split(":")[0] in argv]
    rows = []
    for preset, topology, overrides, maxtext in cases:
        r = run(preset, topology, overrides)
        r["maxtext"] = maxtext
        rows.append(r)
    print()
    print(
        "| preset | topology | tokens/chip | remat | HBM/chip GiB | fits | AR / RS / AG GiB sent | weight-sized ARs | step (est.) | MFU bound | compile s | MaxText |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sent = {
            k: r["collectives"].get(k, {}).get("sent_bytes", 0) / GIB
            for k in ("all-reduce", "reduce-scatter", "all-gather")
        }
        e = r["estimate"]
        print(
            f"| {r['preset']} | {r['topology']} | {r['batch'] * r['seq_len'] // r['chips']} | {r['remat_policy']} "
            f"| {r['memory']['total'] / GIB:.2f} | {'yes' if r['fits'] else 'no'} "
            f"| {sent['all-reduce']:.1f} / {sent['reduce-scatter']:.1f} / {sent['all-gather']:.1f} "
            f"| {len(r['weight_sized_all_reduces'])} | {e.get('step_s', 0) * 1e3:.0f} ms | {e.get('mfu', 0) * 100:.0f}% "
            f"| {r['compile_s']:.0f} | {r['maxtext']} |"
        )
    out = pathlib.Path(__file__).parent / "results" / "aot_scale.json"
    out.write_text(json.dumps(rows, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
