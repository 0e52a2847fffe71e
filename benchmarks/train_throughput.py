"""Train-step throughput of the demo model: jaxslim vs an equivalent Hugging Face PyTorch loop,
the cost of async Orbax checkpoints, and compile time.

Usage::

    python benchmarks/train_throughput.py            # 5 interleaved rounds of 10 steps each
    python benchmarks/train_throughput.py --quick    # smoke run: 2 rounds of 3 steps

Both sides train the model of ``configs/shakespeare_gpt.py`` (GPT-2 shape, fp32, dropout off) on the
same random token batches with AdamW and global-norm clipping from the preset's ``OptimConfig``:

- jaxslim: exactly what ``jaxslim-train`` runs (``create_train_state`` + ``make_train_step``, donated
  state, one device).
- PyTorch: ``transformers.GPT2LMHeadModel`` with ``sdpa`` attention, ``torch.optim.AdamW``,
  ``clip_grad_norm_``, ``zero_grad(set_to_none=True)``, ``torch.set_num_threads(<usable cores>)``.

Each round times ``--steps`` steps of one side, then of the other (the order alternates), so drift
of the shared machine hits both. Reported: median step time over rounds, tokens/s, and
``torch / jaxslim`` (> 1: jaxslim faster).

Checkpoint overhead: an async save copies the state to host memory and writes it in background
threads. Per round, a window of ``--window`` steps that starts with ``Checkpointer.save`` is timed
against a window without; the difference is the cost of one save, and the overhead of saving every
K steps is that cost over K step times. Results go to ``benchmarks/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config():
    spec = importlib.util.spec_from_file_location("preset", ROOT / "configs" / "shakespeare_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("")


def jax_side(cfg, batches):
    from flax import nnx

    from jaxslim.models import Transformer
    from jaxslim.optim import build_optimizer
    from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
    from jaxslim.training import create_train_state, lm_objective, make_train_step

    mesh_cfg = cfg.mesh.__class__(data=1)
    mesh = make_mesh(mesh_cfg, jax.devices()[:1])
    rules = mesh_cfg.rules
    tx = build_optimizer(cfg.optim, cfg.steps)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(lambda: Transformer(cfg.model, rngs=nnx.Rngs(0)), tx, mesh, rules)
        step = make_train_step(setup, lm_objective, batch_sharding=batch_sharding(mesh, rules))
        device_batches = [shard_batch({"tokens": b}, mesh, rules) for b in batches]
        t = time.perf_counter()
        compiled = step.lower(state, device_batches[0]).compile()
        compile_s = time.perf_counter() - t
    holder = {"state": state}

    def run(n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            holder["state"], m = compiled(holder["state"], device_batches[i % len(device_batches)])
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t) / n

    return run, holder, compile_s


def torch_side(cfg, batches, threads: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = cfg.model
    hf = GPT2Config(
        vocab_size=m.vocab_size,
        n_positions=m.max_len,
        n_embd=m.d_model,
        n_layer=m.n_layers,
        n_head=m.n_heads,
        n_inner=m.d_ff,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=m.norm_eps,
        attn_implementation="sdpa",
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(hf).train()
    o = cfg.optim
    opt = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
    )
    data = [torch.from_numpy(b.astype(np.int64)) for b in batches]
    n_params = sum(p.numel() for p in model.parameters())

    def run(n: int) -> float:
        t = time.perf_counter()
        for i in range(n):
            tokens = data[i % len(data)]
            logits = model(input_ids=tokens[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
            opt.step()
        return (time.perf_counter() - t) / n

    return run, n_params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
    p.add_argument("--window", type=int, default=20, help="steps per checkpoint-overhead window")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps, args.window = 2, 3, 4
    out = (
        args.out or ROOT / "benchmarks" / "results" / f"train_throughput{'_quick' if args.quick else ''}.json"
    )

    cfg = load_config()
    b, t = cfg.data.batch_size, cfg.data.seq_len
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.model.vocab_size, (b, t + 1), dtype=np.int32) for _ in range(4)]
    threads = len(os.sched_getaffinity(0))

    jax_run, holder, compile_s = jax_side(cfg, batches)
    torch_run, torch_params = torch_side(cfg, batches, threads)
    jax_params = sum(x.size for x in jax.tree.leaves(holder["state"].params))
    jax_run(2), torch_run(2)  # warm-up

    times: dict[str, list[float]] = {"jaxslim": [], "pytorch": []}
    for r in range(args.rounds):
        order = [("jaxslim", jax_run), ("pytorch", torch_run)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(fn(args.steps))

    from jaxslim.checkpoint import Checkpointer

    save_cost, plain, with_save = [], [], []
    with tempfile.TemporaryDirectory() as tmp, Checkpointer(tmp, max_to_keep=2, async_save=True) as ck:
        for r in range(args.rounds):
            base = jax_run(args.window) * args.window
            t0 = time.perf_counter()
            ck.save(r + 1, holder["state"], extra={"data": {"round": r}})
            jax_run(args.window)
            total = time.perf_counter() - t0  # the save call plus the window its writes overlap
            ck.wait()
            plain.append(base)
            with_save.append(total)
            save_cost.append(total - base)

    med = {k: statistics.median(v) for k, v in times.items()}
    step_s = med["jaxslim"]
    cost = statistics.median(save_cost)
    rows = [
        ("PyTorch (HF GPT2LMHeadModel)", med["pytorch"], b * t / med["pytorch"], "-"),
        ("jaxslim", step_s, b * t / step_s, f"{med['pytorch'] / step_s:.2f}"),
    ]
    print(
        f"\nTrain step of {cfg.model.arch} {jax_params / 1e6:.2f}M params, batch {b}x{t}, fp32, "
        f"{threads} threads, {args.rounds} rounds x {args.steps} steps (median)\n"
    )
    print("| variant | s/step | tokens/s | torch / jaxslim |\n|---|---|---|---|")
    for name, s, tok, ratio in rows:
        print(f"| {name} | {s:.3f} | {tok:.0f} | {ratio} |")
    print(f"\njaxslim compile (lower + compile): {compile_s:.2f} s")
    print(f"async checkpoint: one save costs {cost:.3f} s of training time (median over {args.rounds});")
    for k in (100, 10):
        print(f"  saving every {k} steps: {100 * cost / (k * step_s):.2f}% step-time overhead")

    result = {
        "machine": {
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in open("/proc/cpuinfo")
                    if line.startswith("model name")
                ),
                platform.processor(),
            ),
            "usable_cores": threads,
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": __import__("torch").__version__,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        },
        "model": {"params_jaxslim": jax_params, "params_torch": torch_params, "batch": b, "seq_len": t},
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "step_s": times,
        "median_step_s": med,
        "torch_over_jaxslim": med["pytorch"] / step_s,
        "compile_s": compile_s,
        "checkpoint": {
            "window_steps": args.window,
            "window_s_plain": plain,
            "window_s_with_save": with_save,
            "save_cost_s": save_cost,
            "overhead_pct": {str(k): 100 * cost / (k * step_s) for k in (100, 10)},
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
