"""One forward+backward step: jaxslim against Hugging Face PyTorch, interleaved, on this machine.

Two models, fp32, dropout off:

* ``bert``: a MiniLM-sized encoder (``ModelConfig.minilm_l6()``: 6 layers, width 384, 12 heads,
  FFN 1536, vocab 30522), batch 32 x 128 tokens, loss ``mean(last_hidden ** 2)``, against
  ``transformers.BertModel``.
* ``gpt2``: a GPT-2-small decoder (``ModelConfig.gpt2_small()``), batch 8 x 128 tokens (one step is a
  few seconds on two CPU cores), loss the mean next-token cross-entropy, against
  ``transformers.GPT2LMHeadModel``.

The jaxslim step is ``jax.jit(jax.value_and_grad(loss))`` over the ``nnx.Param`` slice of ``nnx.split``
(the whole step in one executable). Rows: PyTorch (``sdpa`` attention, ``torch.set_num_threads`` =
usable cores), jaxslim with scanned layers (the default) and jaxslim with ``scan_layers=False``.

Every row runs in its own worker process, so environment settings that only act at process start
(``XLA_FLAGS``, ``GLIBC_TUNABLES``) apply, and no runtime's idle threads sit inside another's timing.
The parent starts the workers one after another (compiling while the others are idle), then asks
each for one step per round, in a shuffled order, for ``--repeats`` rounds, and reports the median
and minimum step time, the ratio ``torch_time / jaxslim_time`` (> 1: jaxslim is faster) and
jaxslim's compile time (lower + compile, persistent compilation cache off).

By default the workers run with glibc malloc tuned so that freed memory is kept and reused rather
than handed back to the kernel (see ``MALLOC_TUNABLES``): XLA:CPU allocates its large temporary
buffers afresh at every execution, and with glibc's defaults each step page-faults them in again
(about 0.5 s of kernel time per BERT step on two cores). PyTorch gets the same environment.
``--malloc default`` turns this off.

On a GPU (``jax.default_backend() == "gpu"``) the script also times a bf16 GPT-2-small train step
(forward, backward and an AdamW update; ``--gpu-batch``) and reports tokens/s and MFU: model FLOPs
``6 * N * tokens`` plus attention ``12 * layers * d_model * length * tokens``, over the device's peak
dense bf16 FLOP/s from a small table (H100, H200, A100). ``--train-step`` forces that section
anywhere (on a CPU MFU is left out).

Usage::

    python benchmarks/forward_backward.py                 # full run, ~3.5 min on 2 cores
    python benchmarks/forward_backward.py --quick         # smoke run, small batches
    python benchmarks/forward_backward.py --only bert --repeats 20

Results go to ``benchmarks/results/forward_backward.json`` (``--quick``: ``forward_backward_quick.json``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Keep freed heap memory for reuse: one arena (XLA's thread pool would otherwise allocate from
# per-thread arenas whose large blocks are mmap'd and unmapped), no mmap for large blocks (they
# would be unmapped on free however big the threshold), no trimming of the heap top.
MALLOC_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"

MODELS: dict[str, dict[str, Any]] = {
    "bert": {"batch": 32, "length": 128, "quick_batch": 8, "title": "MiniLM-L6 BERT (encoder)"},
    "gpt2": {"batch": 8, "length": 128, "quick_batch": 2, "title": "GPT-2 small (decoder, LM head)"},
}
ROWS = ("torch", "jaxslim", "jaxslim-unscanned")
ROW_TITLES = {
    "torch": "PyTorch (HF, sdpa)",
    "jaxslim": "jaxslim (scanned layers)",
    "jaxslim-unscanned": "jaxslim (scan_layers=False)",
}

# Peak dense bf16 tensor FLOP/s (no sparsity), by a substring of jax's device_kind; first match wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


# -- workers -----------------------------------------------------------------------------------------


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _tokens(vocab: int, batch: int, length: int):
    import numpy as np

    return np.random.RandomState(0).randint(0, vocab, (batch, length)).astype(np.int64)


def _torch_worker(spec: dict) -> tuple[Any, dict]:
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    if spec["model"] == "bert":
        hf = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            max_position_embeddings=512,
            type_vocab_size=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        hf._attn_implementation = "sdpa"
        model = transformers.BertModel(hf, add_pooling_layer=False)
    else:
        hf = transformers.GPT2Config(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        hf._attn_implementation = "sdpa"
        model = transformers.GPT2LMHeadModel(hf)
    model.train()
    tokens = torch.from_numpy(_tokens(hf.vocab_size, spec["batch"], spec["length"]))

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if spec["model"] == "bert":
            hidden = model(input_ids=tokens).last_hidden_state
            loss = hidden.square().mean()
        else:
            logits = model(input_ids=tokens).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
            )
        loss.backward()
        return loss.item()

    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "attn_implementation": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    return step, info


def _jax_model(spec: dict, **overrides):
    from flax import nnx

    from jaxslim.config import ModelConfig
    from jaxslim.models import Transformer

    if spec["model"] == "bert":
        cfg = ModelConfig.minilm_l6(pooler=False, **overrides)
    elif spec.get("tiny"):
        cfg = ModelConfig.gpt2(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, **overrides)
    else:
        cfg = ModelConfig.gpt2_small(**overrides)
    return cfg, Transformer(cfg, rngs=nnx.Rngs(0))


def _jax_loss(cfg, graphdef):
    import jax.numpy as jnp
    from flax import nnx

    from jaxslim.engine.losses import causal_lm_loss

    def loss_fn(params, rest, tokens):
        out = nnx.merge(graphdef, params, rest)(tokens)
        if cfg.arch == "bert":
            return jnp.mean(jnp.square(out.hidden))
        return causal_lm_loss(out.logits[:, :-1], tokens[:, 1:])[0]

    return loss_fn


def _count(tree) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(tree))


def _device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "devices": jax.device_count()}


def _jax_worker(spec: dict) -> tuple[Any, dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    jax.config.update("jax_enable_compilation_cache", False)  # compile time without the disk cache
    cfg, model = _jax_model(spec, scan_layers=spec["row"] == "jaxslim")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jnp.asarray(_tokens(cfg.vocab_size, spec["batch"], spec["length"]), jnp.int32)
    t0 = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(_jax_loss(cfg, graphdef))).lower(params, rest, tokens)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    def step() -> float:
        loss, grads = compiled(params, rest, tokens)
        jax.block_until_ready(grads)
        return float(loss)

    info = {
        "params": _count(params),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "lower_compile_s": t2 - t0,
        **_device_info(),
    }
    return step, info


def _peak_flops(device_kind: str) -> float | None:
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


def _train_step_worker(spec: dict) -> tuple[Any, dict]:
    """A bf16 (compute) / fp32 (params) GPT-2-small train step with AdamW, for tokens/s and MFU."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    jax.config.update("jax_enable_compilation_cache", False)
    # spec["tiny"]: a tiny model, for checking this path on a CPU
    cfg, model = _jax_model({"model": "gpt2", "tiny": spec.get("tiny", False)}, dtype="bfloat16")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-4, weight_decay=0.1)
    opt_state = tx.init(params)
    tokens = jnp.asarray(_tokens(cfg.vocab_size, spec["batch"], spec["length"]), jnp.int32)
    loss_fn = _jax_loss(cfg, graphdef)

    def train_step(params, opt_state, rest, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, rest, tokens).compile()
    compile_s = time.perf_counter() - t0
    state = {"params": params, "opt": opt_state}

    def step() -> float:
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], rest, tokens)
        return float(loss)  # waits for the step

    n_params = _count(params) - model.embed.positions[...].size  # a position lookup costs no FLOPs
    tokens_per_step = spec["batch"] * spec["length"]
    flops = (6 * n_params + 12 * cfg.n_layers * cfg.d_model * spec["length"]) * tokens_per_step
    info = {
        "params": _count(params),
        "flops_params": n_params,
        "flops_per_step": flops,
        "lower_compile_s": compile_s,
        "dtype": "bfloat16 compute, float32 params, AdamW",
        "tiny": spec.get("tiny", False),
        **_device_info(),
    }
    info["peak_bf16_flops"] = _peak_flops(info["device_kind"]) if info["backend"] == "gpu" else None
    return step, info


def worker_main(spec: dict) -> None:
    """Builds one row's step, reports ``ready``, then runs one step per ``step`` line on stdin."""
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    if spec["row"] == "torch":
        step, info = _torch_worker(spec)
    elif spec["row"] == "train-bf16":
        step, info = _train_step_worker(spec)
    else:
        step, info = _jax_worker(spec)
    losses = [step() for _ in range(spec.get("warmup", 2))]
    proto.write(json.dumps({"ready": True, "loss": losses[-1], **info}) + "\n")
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        proto.write(json.dumps({"t": time.perf_counter() - t0}) + "\n")


# -- the parent ----------------------------------------------------------------------------------------


def _busy_jiffies() -> int | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(v) - v[3] - v[4]  # all but idle and iowait


def _proc_jiffies(pid: int) -> int | None:
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except OSError:
        return None
    return total


class Worker:
    """A worker process running one row."""

    def __init__(self, spec: dict, env: dict[str, str]):
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            raise RuntimeError(f"worker {self.spec['row']!r} ({self.spec['model']}) exited with code {rc}")
        return json.loads(line)

    def step(self) -> tuple[float, float | None]:
        """One timed step; also the CPU time (in cores) that other processes used meanwhile."""
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        b0, p0 = _busy_jiffies(), _proc_jiffies(self.proc.pid)
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        t = self._read()["t"]
        b1, p1 = _busy_jiffies(), _proc_jiffies(self.proc.pid)
        other = None
        if None not in (b0, b1, p0, p1):
            other = ((b1 - b0) - (p1 - p0)) / hz / t
        return t, other

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _worker_env(args) -> dict[str, str]:
    env = dict(os.environ)
    if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    if args.malloc == "tuned":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), MALLOC_TUNABLES]))
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # several jax workers may share one GPU
    return env


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_model(name: str, args, env: dict[str, str], rows: tuple[str, ...]) -> dict:
    """Starts one worker per row, interleaves ``args.repeats`` rounds and summarises."""
    m = MODELS[name]
    batch = m["quick_batch"] if args.quick else m["batch"]
    workers: dict[str, Worker] = {}
    try:
        for row in rows:
            spec = {"model": name, "row": row, "batch": batch, "length": m["length"], "threads": args.threads}
            print(f"[{name}] starting {row} ...", file=sys.stderr, flush=True)
            workers[row] = Worker(spec, env)
        backend = next((w.ready["backend"] for w in workers.values() if "backend" in w.ready), "cpu")
        if backend != "cpu" and "torch" in workers:
            # The PyTorch baseline runs on the CPU; against a GPU its ratio would mean nothing.
            workers.pop("torch").close()
        times: dict[str, list[float]] = {r: [] for r in workers}
        others: dict[str, list[float]] = {r: [] for r in workers}
        order = list(workers)
        rng = random.Random(0)
        for i in range(args.repeats):
            rng.shuffle(order)
            for row in order:
                t, other = workers[row].step()
                times[row].append(t)
                if other is not None:
                    others[row].append(other)
            print(f"[{name}] round {i + 1}/{args.repeats}", file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    tokens = batch * m["length"]
    out = {"title": m["title"], "batch": batch, "length": m["length"], "tokens_per_step": tokens, "rows": {}}
    for row, ts in times.items():
        r = {
            "median_s": _median(ts),
            "min_s": min(ts),
            "times_s": ts,
            "tokens_per_s": tokens / _median(ts),
            "other_cpu_load_median": _median(others[row]) if others[row] else None,
            **{k: v for k, v in workers[row].ready.items() if k != "ready"},
        }
        if "torch" in times and row != "torch":
            r["ratio_torch_over_this"] = _median(times["torch"]) / _median(ts)
            r["paired_ratio_median"] = _median([a / b for a, b in zip(times["torch"], ts, strict=True)])
        out["rows"][row] = r
    return out


def run_train_step(args, env: dict[str, str]) -> dict:
    """Times the bf16 GPT-2-small train step for tokens/s and MFU."""
    batch, length = args.gpu_batch
    spec = {"model": "gpt2", "row": "train-bf16", "batch": batch, "length": length, "threads": args.threads}
    if args.quick:
        spec.update(tiny=True, batch=2, length=16)
    print("[train-bf16] starting ...", file=sys.stderr, flush=True)
    w = Worker(spec, env)
    try:
        ts = [w.step()[0] for _ in range(max(args.repeats, 3))]
    finally:
        w.close()
    info = {k: v for k, v in w.ready.items() if k != "ready"}
    med = _median(ts)
    peak = info.get("peak_bf16_flops")
    return {
        "batch": spec["batch"],
        "length": spec["length"],
        "median_s": med,
        "min_s": min(ts),
        "times_s": ts,
        "tokens_per_s": spec["batch"] * spec["length"] / med,
        "model_flops_per_s": info["flops_per_step"] / med,
        "mfu": info["flops_per_step"] / med / peak if peak else None,
        **info,
    }


def machine_info(args, env: dict[str, str]) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": _usable_cores(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "xla_flags": env.get("XLA_FLAGS", ""),
        "glibc_tunables": env.get("GLIBC_TUNABLES", ""),
        "torch_threads": args.threads,
        "persistent_compilation_cache": False,
    }


def markdown(results: dict) -> str:
    lines = [
        "| model | implementation | batch × length | median s | min s | tokens/s | torch / this | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results["models"].values():
        for row, r in res["rows"].items():
            ratio = r.get("ratio_torch_over_this")
            compile_s = r.get("lower_compile_s")
            lines.append(
                f"| {res['title']} | {ROW_TITLES[row]} | {res['batch']} × {res['length']} | "
                f"{r['median_s']:.3f} | {r['min_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                f"{'—' if ratio is None else f'{ratio:.2f}'} | "
                f"{'—' if compile_s is None else f'{compile_s:.2f}'} |"
            )
    ts = results.get("train_step")
    if ts:
        mfu = "n/a" if ts["mfu"] is None else f"{100 * ts['mfu']:.1f}%"
        lines += [
            "",
            f"bf16 {'tiny GPT-2 (smoke test)' if ts.get('tiny') else 'GPT-2-small'} train step on {ts['device_kind']}: batch {ts['batch']} × {ts['length']}, "
            f"median {ts['median_s'] * 1e3:.1f} ms, {ts['tokens_per_s']:,.0f} tokens/s, "
            f"{ts['model_flops_per_s'] / 1e12:.1f} model TFLOP/s, MFU {mfu}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 10; --quick 3)")
    p.add_argument("--quick", action="store_true", help="small batches and few repeats (a smoke run)")
    p.add_argument("--only", choices=tuple(MODELS), help="run one model only")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {ROWS}")
    p.add_argument("--threads", type=int, default=_usable_cores(), help="torch threads (default: cores)")
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the workers")
    p.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc tuning for all workers (see MALLOC_TUNABLES)",
    )
    p.add_argument("--train-step", action="store_true", help="time the bf16 train step even without a GPU")
    p.add_argument(
        "--gpu-batch", type=int, nargs=2, default=(16, 1024), metavar=("B", "T"), help="train-step batch"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return {}
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    rows = tuple(r for r in args.rows.split(",") if r)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {unknown}; choose from {ROWS}")
    env = _worker_env(args)
    results: dict[str, Any] = {
        "machine": machine_info(args, env),
        "quick": args.quick,
        "repeats": args.repeats,
    }
    results["models"] = {
        name: run_model(name, args, env, rows) for name in MODELS if args.only in (None, name)
    }
    backend = next(
        (r["backend"] for m in results["models"].values() for r in m["rows"].values() if "backend" in r),
        "cpu",
    )
    results["machine"]["jax_backend"] = backend
    if backend == "gpu" or args.train_step:
        results["train_step"] = run_train_step(args, env)
    table = markdown(results)
    results["table_markdown"] = table
    out = args.out or RESULTS / ("forward_backward_quick.json" if args.quick else "forward_backward.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    mi = results["machine"]
    print(
        f"\n{mi['cpu']}, {mi['cores']} cores; jax {mi['versions']['jax']}, torch {mi['versions']['torch']}; "
        f"XLA_FLAGS={mi['xla_flags']!r}; GLIBC_TUNABLES={mi['glibc_tunables']!r}; "
        f"{args.repeats} interleaved rounds\n"
    )
    print(table)
    loaded = [
        f"{name}/{row}"
        for name, m in results["models"].items()
        for row, r in m["rows"].items()
        if (r["other_cpu_load_median"] or 0) > 0.2
    ]
    if loaded:
        print(f"\nwarning: other processes used > 0.2 cores during {loaded}; figures are noisy")
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
