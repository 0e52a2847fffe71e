"""Data at scale: prepare a generated multi-GB corpus, then measure the loader and the memory of
training over it with one and two hosts; grain (MapDataset, ArrayRecord) alongside when installed.

Usage::

    python benchmarks/data_scale.py --gb 5                                  # the full run
    python benchmarks/data_scale.py --gb 0.2 --dir scratch --train-steps 10  # a quick one

Phases (results to ``benchmarks/results/data_scale.json``, a table printed at the end):

1. **corpus**: ``--gb`` of JSON-lines text in 256 MB files, made of the embedded Shakespeare's
   paragraphs drawn into documents of 1-30 paragraphs with a different seed per file (so the text
   is not one block repeated). Written under ``--dir``, never in the repository; deleted at the end
   unless ``--keep``.
2. **prepare**: ``jaxslim.data.prepare`` with ``--workers`` processes and a BPE of ``--vocab``
   trained on a 64 MB sample: seconds per step, input MB/s and tokens/s. The first 64 MB of the
   corpus are also prepared with 1 and with ``--workers`` workers (same tokenizer) for the parallel
   speed-up and the byte-identity of the two.
3. **loader**: tokens/s of the training iterator alone (``TextData.train_iterator``, shards read by
   positioned reads, the Feistel shuffle), for the demo shape (16 x 128) and a pod-like host batch
   (64 x 2048), as host 0 of 1 and of 2, with and without prefetch; compared with the demo
   model's training tokens/s (``results/train_throughput.json``, same kind of machine).
4. **memory**: peak RSS of (a) a process that only iterates the loader (with the RSS after its
   imports subtracted: the data path's own memory), on the whole corpus and on its first 64 MB; (b)
   real training runs (``jaxslim-train shakespeare_gpt --data.manifest``) with one host and with two
   hosts joined by ``jax.distributed`` on this machine (Gloo collectives), each host's peak RSS.
5. **grain** (when ``import grain`` works, e.g. with ``--grain-path`` pointing at a ``pip install
   --target`` folder): the same rows through ``grain.MapDataset`` (shuffle, batch) over the prepared
   shards, and through an ArrayRecord file of packed rows written from them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxslim.paths import absolute

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILE_BYTES = 256 << 20
SAMPLE_BYTES = 64 << 20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child
    # would report its parent's peak.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- 1. corpus ------------------------------------------------------------------------------------


def generate(out: pathlib.Path, total_bytes: int) -> dict:
    from jaxslim.data import corpus_text

    t = time.perf_counter()
    paras = [p.strip() for doc in corpus_text("shakespeare") for p in doc.split("\n\n") if p.strip()]
    # JSON-escaped once; a document is escaped paragraphs joined by an escaped blank line
    enc = [json.dumps(p)[1:-1] for p in paras]
    out.mkdir(parents=True, exist_ok=True)
    written, docs, files = 0, 0, 0
    while written < total_bytes:
        rng = np.random.default_rng([1234, files])
        path = out / f"part-{files:04d}.jsonl"
        target = min(FILE_BYTES, total_bytes - written)
        size = 0
        lines = []
        with open(path, "w") as f:
            while size < target:
                k = int(rng.integers(1, 31))
                idx = rng.integers(0, len(enc), k)
                line = '{"text": "' + "\\n\\n".join(enc[i] for i in idx) + '"}\n'
                lines.append(line)
                size += len(line)
                docs += 1
                if len(lines) >= 4096:
                    f.write("".join(lines))
                    lines = []
            f.write("".join(lines))
        written += path.stat().st_size
        files += 1
    return {"bytes": written, "files": files, "documents": docs, "seconds": time.perf_counter() - t}


# -- 2. prepare -----------------------------------------------------------------------------------


def run_prepare(corpus: pathlib.Path, out: pathlib.Path, workers: int, vocab: int, **kw) -> dict:
    from jaxslim.data import prepare

    t = time.perf_counter()
    m = prepare([str(corpus)], out, workers=workers, vocab_size=vocab, progress=sys.stderr.isatty(), **kw)
    seconds = time.perf_counter() - t
    info = m.raw["prepare"]
    tokens = m.tokens("train") + m.tokens("val")
    return {
        "workers": workers,
        "seconds": seconds,
        "tokenizer_s": info["tokenizer_s"],
        "tokenize_s": info["tokenize_s"],
        "input_bytes": info["input_bytes"],
        "documents": m.documents("train") + m.documents("val"),
        "train_tokens": m.tokens("train"),
        "val_tokens": m.tokens("val"),
        "shards": len(m.splits["train"]) + len(m.splits["val"]),
        "tokens_per_s": tokens / seconds,
        "tokenize_tokens_per_s": tokens / max(info["tokenize_s"], 1e-9),
        "input_mb_per_s": info["input_bytes"] / 2**20 / seconds,
        "bytes_on_disk": sum(p.stat().st_size for p in out.rglob("*.bin")),
    }


def shard_bytes(d: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.bin"))}


# -- 3. loader ------------------------------------------------------------------------------------


def loader_rate(
    manifest: pathlib.Path, seq_len: int, batch: int, hosts: int, prefetch: int, seconds: float
) -> float:
    from jaxslim.data import DataConfig, TextData

    data = TextData(DataConfig(manifest=str(manifest), seq_len=seq_len, batch_size=batch, prefetch=prefetch))
    it = data.train_iterator(process_index=0, process_count=hosts)
    next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        next(it)
        n += 1
    rate = n * (batch // hosts) * seq_len / (time.perf_counter() - t)
    if hasattr(it, "close"):
        it.close()
    return rate


def demo_tokens_per_s() -> float | None:
    path = RESULTS / "train_throughput.json"
    try:
        r = json.loads(path.read_text())
        return r["model"]["batch"] * r["model"]["seq_len"] / r["median_step_s"]["jaxslim"]
    except (OSError, KeyError, ValueError):
        return None


# -- 4. memory ------------------------------------------------------------------------------------


def loader_rss_child(manifest: str, index: int, count: int, steps: int, seq_len: int, batch: int) -> None:
    """(subprocess) iterate the loader; print the data path's own peak memory as JSON."""
    from jaxslim.data import DataConfig, TextData

    base = rss_mb()
    data = TextData(DataConfig(manifest=manifest, seq_len=seq_len, batch_size=batch, prefetch=2))
    it = data.train_iterator(process_index=index, process_count=count)
    for _ in range(steps):
        next(it)
    it.close()
    print(json.dumps({"base_mb": base, "peak_mb": peak_rss_mb(), "rows": len(data.train_sequences)}))


def run_loader_rss(manifest: pathlib.Path, hosts: int, steps: int, seq_len: int, batch: int) -> list[dict]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_loader-rss",
                str(manifest),
                str(i),
                str(hosts),
                str(steps),
                str(seq_len),
                str(batch),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
        )
        for i in range(hosts)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"loader RSS child failed ({p.returncode})")
        r = json.loads(stdout.strip().splitlines()[-1])
        out.append({**r, "data_path_mb": r["peak_mb"] - r["base_mb"]})
    return out


def train_child(args: list[str]) -> None:
    """(subprocess) one host of a training run; prints its peak RSS and wall time as JSON."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jaxslim.cli import train

    t = time.perf_counter()
    code = train.main(args)
    print(json.dumps({"code": code, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(manifest: pathlib.Path, workdir: pathlib.Path, hosts: int, steps: int) -> list[dict]:
    args = [
        "shakespeare_gpt",
        f"--data.manifest={manifest}",
        f"--workdir={workdir}",
        f"--steps={steps}",
        "--checkpoint.every=0",
        "--eval-batches=2",
        "--sample-tokens=0",
        "--no-tensorboard",
        f"--log-every={max(steps // 2, 1)}",
    ]
    port = free_port()
    procs = []
    for i in range(hosts):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
        env.pop("XLA_FLAGS", None)
        if hosts > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES=str(hosts),
                JAX_PROCESS_ID=str(i),
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--_train", json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        lines = [x for x in stdout.strip().splitlines() if x.startswith("{")]
        if p.returncode or not lines:
            raise RuntimeError(f"training host failed ({p.returncode}):\n{stderr[-3000:]}")
        out.append(json.loads(lines[-1]))
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    for r in out:
        r["tokens_per_s_last"] = rates[-1] if rates else None
    return out


# -- 5. grain -------------------------------------------------------------------------------------


def grain_child(manifest: str, workdir: str, seq_len: int, batch: int, seconds: float, rows_cap: int) -> None:
    """(subprocess) the same rows through grain; prints tokens/s as JSON."""
    import grain

    from jaxslim.data import DataConfig, TextData

    data = TextData(DataConfig(manifest=manifest, seq_len=seq_len, batch_size=batch, prefetch=0))
    rows = data.train_sequences
    res: dict = {"grain": getattr(grain, "__version__", "?")}

    def rate(it) -> float:
        next(it)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            next(it)
            n += 1
        return n * batch * seq_len / (time.perf_counter() - t)

    ds = grain.MapDataset.range(len(rows)).shuffle(seed=0).map(lambda i: rows.take([i])[0]).batch(batch)
    res["map_dataset_tokens_per_s"] = rate(iter(ds))
    ours = data.train_iterator(process_index=0, process_count=1)
    res["ours_tokens_per_s"] = rate(ours)

    # ArrayRecord: packed rows as records (the packing is fixed at write time)
    from array_record.python.array_record_module import ArrayRecordWriter

    n = min(rows_cap, len(rows))
    path = pathlib.Path(workdir) / "rows.array_record"
    t = time.perf_counter()
    w = ArrayRecordWriter(str(path), "group_size:1")
    for start in range(0, n, 1024):
        for r in rows.take(np.arange(start, min(start + 1024, n))).astype(np.uint16):
            w.write(r.tobytes())
    w.close()
    res["array_record_write_s"] = time.perf_counter() - t
    res["array_record_rows"] = n
    res["array_record_bytes"] = path.stat().st_size
    source = grain.sources.ArrayRecordDataSource([str(path)])
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=0)
        .map(lambda b: np.frombuffer(b, np.uint16).astype(np.int32))
        .batch(batch)
    )
    res["array_record_tokens_per_s"] = rate(iter(ds))
    print(json.dumps(res))


def run_grain(manifest, workdir, grain_path, seq_len, batch, seconds, rows_cap) -> dict | None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    if grain_path:
        env["JAXSLIM_BENCH_EXTRA_PATH"] = grain_path
    p = subprocess.run(
        [
            sys.executable,
            __file__,
            "--_grain",
            str(manifest),
            str(workdir),
            str(seq_len),
            str(batch),
            str(seconds),
            str(rows_cap),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if p.returncode or not lines:
        print(f"grain phase skipped ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=5.0, help="generated corpus size in GB (2^30 bytes)")
    ap.add_argument(
        "--dir",
        default=None,
        help="scratch folder (corpus, shards, runs); default: jaxslim-data-scale in the system temp folder",
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--loader-seconds", type=float, default=3.0)
    ap.add_argument("--rss-steps", type=int, default=3000)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--grain-path", default=None, help="folder to add to sys.path for grain / array_record")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpus and shards")
    ap.add_argument("--reuse", action="store_true", help="reuse a corpus and shards already in --dir")
    args = ap.parse_args()

    scratch = absolute(args.dir or pathlib.Path(tempfile.gettempdir()) / "jaxslim-data-scale")
    corpus, data = scratch / "corpus", scratch / "prepared"
    res: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("dir", "grain_path")},
    }
    if not args.reuse and scratch.exists():
        shutil.rmtree(scratch)
    try:
        if not corpus.exists():
            res["corpus"] = generate(corpus, int(args.gb * 2**30))
            print("corpus:", res["corpus"], flush=True)
        if not (data / "manifest.json").exists():
            res["prepare"] = run_prepare(corpus, data, args.workers, args.vocab)
            print("prepare:", res["prepare"], flush=True)

        # parallel speed-up and byte identity on the first 64 MB, with the tokenizer just trained
        first = scratch / "first.jsonl"
        if not first.exists():
            with open(corpus / "part-0000.jsonl", "rb") as src, open(first, "wb") as dst:
                while dst.tell() < SAMPLE_BYTES:
                    line = src.readline()
                    if not line:
                        break
                    dst.write(line)
        sub = {}
        for w in (1, args.workers):
            out = scratch / f"first-w{w}"
            shutil.rmtree(out, ignore_errors=True)
            sub[w] = run_prepare(
                first, out, w, args.vocab, tokenizer=data / "tokenizer.json", unit_bytes=16 << 20
            )
        res["first_file"] = {
            "bytes": first.stat().st_size,
            "seconds": {str(w): r["seconds"] for w, r in sub.items()},
            "tokens_per_s": {str(w): r["tokens_per_s"] for w, r in sub.items()},
            "speedup": sub[1]["seconds"] / sub[args.workers]["seconds"],
            "byte_identical": shard_bytes(scratch / "first-w1")
            == shard_bytes(scratch / f"first-w{args.workers}"),
        }
        print("first file:", res["first_file"], flush=True)

        loader = []
        for seq_len, batch in ((128, 16), (2048, 64)):
            for hosts in (1, 2):
                for prefetch in (0, 2):
                    rates = [
                        loader_rate(data, seq_len, batch, hosts, prefetch, args.loader_seconds / 3)
                        for _ in range(3)
                    ]
                    loader.append(
                        {
                            "seq_len": seq_len,
                            "global_batch": batch,
                            "hosts": hosts,
                            "prefetch": prefetch,
                            "tokens_per_s": statistics.median(rates),
                        }
                    )
                    print("loader:", loader[-1], flush=True)
        res["loader"] = loader
        res["demo_train_tokens_per_s"] = demo_tokens_per_s()

        rss = {}
        for label, manifest in (("corpus", data), ("first_64mb", scratch / "first-w1")):
            for hosts in (1, 2):
                rss[f"{label}_{hosts}host"] = run_loader_rss(manifest, hosts, args.rss_steps, 128, 16)
                print("loader rss:", label, hosts, rss[f"{label}_{hosts}host"], flush=True)
        res["loader_rss"] = rss

        training = {}
        for hosts in (1, 2):
            wd = scratch / f"train-{hosts}"
            shutil.rmtree(wd, ignore_errors=True)
            training[str(hosts)] = run_training(data, wd, hosts, args.train_steps)
            print("training:", hosts, training[str(hosts)], flush=True)
        res["training"] = training

        res["grain"] = run_grain(data, scratch, args.grain_path, 128, 16, args.loader_seconds, 200_000)
        print("grain:", res["grain"], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_scale.json").write_text(json.dumps(res, indent=1))
    print_table(res)


def print_table(res: dict) -> None:
    m = res["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores (shared), python {m['python']}")
    if "corpus" in res:
        c = res["corpus"]
        print(
            f"corpus: {c['bytes'] / 2**30:.2f} GB, {c['files']} files, {c['documents']:,} documents, generated in {c['seconds']:.0f} s"
        )
    if "prepare" in res:
        p = res["prepare"]
        print("| phase | value |\n|---|---|")
        print(
            f"| prepare, {p['workers']} workers | {p['seconds']:.0f} s (BPE {p['tokenizer_s']:.0f} s, tokenize {p['tokenize_s']:.0f} s) |"
        )
        print(f"| input | {p['input_bytes'] / 2**30:.2f} GB, {p['input_mb_per_s']:.1f} MB/s |")
        print(
            f"| tokens | {p['train_tokens'] + p['val_tokens']:,} ({p['shards']} shards, {p['bytes_on_disk'] / 2**30:.2f} GB) |"
        )
        print(
            f"| prepare tokens/s | {p['tokens_per_s']:,.0f} (tokenize phase alone {p['tokenize_tokens_per_s']:,.0f}) |"
        )
    f = res["first_file"]
    print(
        f"| first 64 MB, 1 vs {max(map(int, f['seconds']))} workers | {f['seconds']['1']:.1f} s vs "
        f"{f['seconds'][str(max(map(int, f['seconds'])))]:.1f} s, speed-up {f['speedup']:.2f}x, "
        f"byte-identical {f['byte_identical']} |"
    )
    demo = res.get("demo_train_tokens_per_s")
    print(
        "\n| global batch x seq | hosts | prefetch | loader tokens/s per host | x demo training |\n|---|---|---|---|---|"
    )
    for r in res["loader"]:
        x = f"{r['tokens_per_s'] / demo:,.0f}x" if demo else "-"
        print(
            f"| {r['global_batch']} x {r['seq_len']} | {r['hosts']} | {r['prefetch']} | {r['tokens_per_s']:,.0f} | {x} |"
        )
    print("\n| data path RSS (loader only) | per host: peak - after imports (MB) |\n|---|---|")
    for k, v in res["loader_rss"].items():
        per_host = ", ".join(format(h["data_path_mb"], ".0f") for h in v)
        print(f"| {k} ({v[0]['rows']:,} rows) | {per_host} |")
    print("\n| training run (demo model) | hosts | peak RSS per host (MB) | tokens/s |\n|---|---|---|---|")
    for hosts, v in res["training"].items():
        tps = v[0].get("tokens_per_s_last")
        per_host = ", ".join(format(h["peak_mb"], ".0f") for h in v)
        print(f"| shakespeare_gpt over the corpus | {hosts} | {per_host} | {tps:,.0f} |")
    g = res.get("grain")
    if g:
        print(
            f"\ngrain {g['grain']}: MapDataset over the shards {g['map_dataset_tokens_per_s']:,.0f} tokens/s vs ours "
            f"{g['ours_tokens_per_s']:,.0f}; ArrayRecord of {g['array_record_rows']:,} packed rows: write "
            f"{g['array_record_write_s']:.1f} s, read {g['array_record_tokens_per_s']:,.0f} tokens/s"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_loader-rss":
        a = sys.argv[2:]
        loader_rss_child(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_train":
        train_child(json.loads(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_grain":
        extra = os.environ.get("JAXSLIM_BENCH_EXTRA_PATH")
        if extra:
            sys.path.append(extra)  # after the project's own packages, so numpy etc. stay ours
        a = sys.argv[2:]
        grain_child(a[0], a[1], int(a[2]), int(a[3]), float(a[4]), int(a[5]))
    else:
        main()
