"""Train steps at scale, compiled ahead of time for TPU topologies (libtpu, no TPU): per-chip HBM,
fits, collective bytes, roofline step time and MFU bound, compile time; beside MaxText's published
configuration of the same model and topology (per-device batch, sequence length, remat policy, and
the MFU MaxText reports where it reports one).

Usage (in the environment with libtpu, ``make aot``)::

    .venv-aot/bin/python benchmarks/aot_scale.py                 # every case (a minute or more each)
    .venv-aot/bin/python benchmarks/aot_scale.py llama2_7b       # the cases whose name starts so
    .venv-aot/bin/python benchmarks/aot_scale.py --table         # the recorded results' table

Each case is a ``jaxslim-aot`` command line (preset and ``jaxslim-train`` overrides). Results go to
``benchmarks/results/aot_scale.json``, one entry per case, replacing that case's earlier entry. The
step time and MFU bound are roofline estimates (peak bf16 FLOP/s with the remat policy's
recomputation, ICI bandwidth, perfect overlap), not measurements.

MaxText's figures are quoted from its repository (AI-Hypercomputer/maxtext): the configurations from
``benchmarks/maxtext_v5e_model_configs.py`` / ``maxtext_v5p_model_configs.py`` and
``configs/tpu/{v5e,v5p}/*.sh``; the MFUs from ``tests/end_to_end/tpu/llama2/run_llama2.md``
(Llama2-70b: 65% on v5p-128, 57% on v5e-256) and ``tests/end_to_end/tpu/mixtral/Run_Mixtral.md``
(Mixtral 8x7B: 54.89% on v5p-128), which do not say which configuration they ran.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
from typing import NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from jaxslim.aot import compile_train_step, parse_topology  # noqa: E402
from jaxslim.cli.train import parse  # noqa: E402

GIB = 2**30
# Llama-2-70B from the Llama-3-70B preset: MaxText publishes its configurations for the 2-series
LLAMA2_70B = ["--model.vocab-size", "32000", "--model.rope-theta", "10000", "--model.max-len", "4096"]
# MaxText's v5e-256 configuration of the 70B: 2 x 2048 tokens per chip, q/k/v offloaded to host
V5E_70B_RUN = [
    "--data.seq-len",
    "2048",
    "--data.batch-size",
    "512",
    "--model.remat-policy",
    "qkv_proj_offloaded",
]


class MaxText(NamedTuple):
    """MaxText's published configuration of a run: per-device batch, sequence length, remat policy,
    its reported MFU (None: not reported) and where it is written."""

    batch: float
    seq: int
    remat: str
    mfu: str | None
    source: str


class Case(NamedTuple):
    name: str
    argv: list[str]  # jaxslim-aot's: preset, overrides (and --topology)
    maxtext: MaxText | None


V5E_7B = MaxText(4, 2048, "save_qkv_proj", None, "configs/tpu/v5e/llama2_7b.sh")
V5P_7B = MaxText(4, 4096, "minimal", None, "maxtext_v5p_model_configs.py llama2_7b_v5p_128")
V5E_8B = MaxText(
    2,
    8192,
    "custom (layer input, q/k/v, out offloaded)",
    None,
    "maxtext_v5e_model_configs.py llama3_1_8b_8192_v5e_256",
)
V5P_70B = MaxText(
    2, 4096, "save_dot_except_mlpwi", "65% (Llama2-70b)", "maxtext_v5p_model_configs.py llama2_70b_v5p_128"
)
V5E_70B = MaxText(
    2, 2048, "qkv_proj_offloaded", "57% (Llama2-70b)", "maxtext_v5e_model_configs.py llama2_70b_v5e_256"
)
# Trillium (v6e) entries of maxtext_trillium_model_configs.py; v6e-256 where the file names no pod
V6E_7B = MaxText(12, 4096, "full", None, "configs/tpu/v6e/llama2_7b_4096.sh (trillium-256)")
V6E_8B = MaxText(8, 8192, "full", None, "maxtext_trillium_model_configs.py llama3_8b_8192")
V6E_70B = MaxText(4, 4096, "full", None, "maxtext_trillium_model_configs.py llama2_70b_4096")
V6E_MIXTRAL = MaxText(
    12,
    4096,
    "custom (layer input, q/k/v, out offloaded)",
    None,
    "maxtext_trillium_model_configs.py mixtral_8x7b_dropped",
)
MIXTRAL = MaxText(0, 0, "not reported", "54.89%", "tests/end_to_end/tpu/mixtral/Run_Mixtral.md")

CASES = [
    Case("llama2_7b v5e-256", ["llama2_7b", "--topology", "v5e-256"], V5E_7B),
    Case(
        "llama2_7b v5e-256 full remat",
        ["llama2_7b", "--topology", "v5e-256", "--model.remat-policy", "full"],
        None,
    ),
    Case(
        "llama2_7b v5p-128",
        ["llama2_7b", "--topology", "v5p-128", "--data.seq-len", "4096", "--data.batch-size", "256"]
        + ["--model.remat-policy", "dots_with_no_batch_dims"],
        V5P_7B,
    ),
    Case("llama3_8b:2k v5e-256", ["llama3_8b:2k", "--topology", "v5e-256"], None),
    Case("llama3_8b v5e-256", ["llama3_8b", "--topology", "v5e-256"], None),
    Case(
        "llama3_8b v5e-256 2 x 8192 offload",
        ["llama3_8b", "--topology", "v5e-256", "--data.batch-size", "512", "--model.remat-policy", "offload"],
        V5E_8B,
    ),
    Case(
        "llama3_8b v5e-256 32k context 4",
        ["llama3_8b", "--topology", "v5e-256", "--data.seq-len", "32768", "--data.batch-size", "64"]
        + ["--model.max-len", "32768", "--mesh.context", "4"],
        None,
    ),
    Case("llama3_70b v5p-128", ["llama3_70b", "--topology", "v5p-128"], None),
    Case("llama2_70b v5p-128", ["llama3_70b", "--topology", "v5p-128", *LLAMA2_70B], V5P_70B),
    Case("llama3_70b v5e-256 2 x 2048", ["llama3_70b", "--topology", "v5e-256", *V5E_70B_RUN], None),
    Case("llama2_70b v5e-256", ["llama3_70b", "--topology", "v5e-256", *V5E_70B_RUN, *LLAMA2_70B], V5E_70B),
    Case("llama3_70b:v5e v5e-256 offload", ["llama3_70b:v5e", "--topology", "v5e-256"], None),
    Case(
        "llama2_70b v5e-256 offload",
        ["llama3_70b:v5e", "--topology", "v5e-256", *LLAMA2_70B],
        V5E_70B,
    ),
    Case("mixtral_8x7b v5p-128", ["mixtral_8x7b", "--topology", "v5p-128"], MIXTRAL),
    Case(
        "llama2_7b v6e-256",
        ["llama2_7b", "--topology", "v6e-256", "--data.seq-len", "4096", "--data.batch-size", "3072"]
        + ["--model.remat-policy", "full"],
        V6E_7B,
    ),
    Case(
        "llama3_8b v6e-256",
        ["llama3_8b", "--topology", "v6e-256", "--data.batch-size", "2048", "--model.remat-policy", "full"],
        V6E_8B,
    ),
    Case(
        "llama2_70b v6e-256",
        ["llama3_70b", "--topology", "v6e-256", *LLAMA2_70B, "--data.batch-size", "1024"]
        + ["--model.remat-policy", "full"],
        V6E_70B,
    ),
    Case(
        "llama2_7b v6e-256 offload",
        ["llama2_7b", "--topology", "v6e-256", "--data.seq-len", "4096", "--data.batch-size", "3072"]
        + ["--model.remat-policy", "offload"],
        V6E_7B,
    ),
    Case(
        "llama3_8b v6e-256 offload",
        [
            "llama3_8b",
            "--topology",
            "v6e-256",
            "--data.batch-size",
            "2048",
            "--model.remat-policy",
            "offload",
        ],
        V6E_8B,
    ),
    Case(
        "llama2_70b v6e-256 offload",
        ["llama3_70b", "--topology", "v6e-256", *LLAMA2_70B, "--data.batch-size", "1024"]
        + ["--model.remat-policy", "offload"],
        V6E_70B,
    ),
    Case(
        "mixtral_8x7b v6e-256",
        [
            "mixtral_8x7b",
            "--topology",
            "v6e-256",
            "--data.batch-size",
            "3072",
            "--model.remat-policy",
            "offload",
        ],
        V6E_MIXTRAL,
    ),
]


def run(case: Case) -> dict:
    from jaxslim.cli.aot import split_own_flags

    own, rest = split_own_flags(case.argv)
    cfg = parse(rest)
    report, _ = compile_train_step(cfg, parse_topology(own["topology"]))
    print(report.format(), flush=True)
    return report.to_json() | {
        "case": case.name,
        "argv": case.argv,
        "remat_policy": cfg.model.remat_policy,
        "maxtext": case.maxtext._asdict() if case.maxtext else None,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| case | tokens/chip | remat | HBM/chip GiB | fits | host GiB | AG / RS / AR GiB sent | weight-sized ARs "
        "| step (est.) | MFU bound | compile s | MaxText: batch x seq, remat | MaxText MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sent = [
            r["collectives"].get(k, {}).get("sent_bytes", 0) / GIB
            for k in ("all-gather", "reduce-scatter", "all-reduce")
        ]
        e, m = r["estimate"], r["maxtext"]
        mt = f"{m['batch']:g} x {m['seq']}, {m['remat']}" if m and m["seq"] else "-"
        hbm = f"{r['memory']['total'] / GIB:.2f} of {r['hbm_bytes'] / GIB:.0f}"
        if r["memory"].get("error"):  # refused by the compiler: what it said it needed
            needed = re.search(r"\(([\d.]+)G\) exceeds|Used ([\d.]+)G", r["memory"]["error"])
            hbm = (
                f"> {r['hbm_bytes'] / GIB:.0f} (compiler: {next(g for g in needed.groups() if g)}G)"
                if needed
                else "refused"
            )
        step = f"{e['step_s'] * 1e3:.0f} ms" if e else "-"
        mfu = f"{e['mfu'] * 100:.0f}%" if e else "-"
        lines.append(
            f"| {r['case']} | {r['batch'] * r['seq_len'] // r['chips']} | {r['remat_policy']} "
            f"| {hbm} | {'yes' if r['fits'] else 'no'} | {r['memory'].get('host_temporaries', 0) / GIB:.0f} "
            f"| {' / '.join(f'{x:.1f}' for x in sent) if e else '-'} "
            f"| {len(r['weight_sized_all_reduces']) if e else '-'} "
            f"| {step} | {mfu} "
            f"| {r['compile_s']:.0f} "
            f"| {mt} | {(m or {}).get('mfu') or '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from common import machine_line

    out = pathlib.Path(__file__).parent / "results" / "aot_scale.json"
    previous = json.loads(out.read_text())["rows"] if out.exists() else []
    if argv == ["--table"]:  # the table of the recorded results, nothing compiled
        print(table(previous))
        return
    cases = [c for c in CASES if not argv or any(c.name.startswith(a) for a in argv)]
    rows = {r["case"]: r for r in previous}
    for case in cases:
        rows[case.name] = run(case) | {"machine": machine_line()}
    ordered = [rows[c.name] for c in CASES if c.name in rows]
    print()
    print(table(ordered))
    out.write_text(json.dumps({"rows": ordered}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
