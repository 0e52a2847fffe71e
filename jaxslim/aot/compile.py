"""Compile a training config's real train step for a TPU topology (or the local devices), with
nothing allocated, and report what one chip needs and what the step communicates.

The step is the one ``jaxslim-train`` runs: the same optimizer (:func:`jaxslim.optim.build_optimizer`
wrapped by the pruning transform), objective, loss terms and metrics, built by
:func:`~jaxslim.engine.step.make_train_step` on an abstract train state
(:func:`~jaxslim.engine.state.create_abstract_train_state`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from jaxslim.aot.flops import remat_flops, train_flops
from jaxslim.aot.hlo import Collective, collectives, summarize
from jaxslim.aot.topologies import Chip, Topology, topology_devices
from jaxslim.config import TrainConfig
from jaxslim.engine import create_abstract_train_state
from jaxslim.sharding import LAYERS, batch_sharding, logical_axes, make_mesh
from jaxslim.training import methods_of
from jaxslim.training.run import build_steps

GIB = 2**30


@dataclass
class AotReport:
    """What compiling one train step for one topology showed. Bytes are per chip."""

    topology: str
    chips: int
    mesh: dict[str, int]
    batch: int
    seq_len: int
    hbm_bytes: int  # the chip's HBM (0: unknown, e.g. CPU devices)
    memory: dict[str, int]  # arguments, outputs, aliased, temporaries, generated code, total
    fits: bool
    compile_s: float
    flops_per_step: float
    collectives: dict[str, dict]
    weight_sized_all_reduces: list[str]
    estimate: dict[str, float] = field(default_factory=dict)  # roofline: compute_s, comm_s, step_s, mfu

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"topology {self.topology} ({self.chips} chips), mesh {self.mesh}, "
            f"batch {self.batch} x {self.seq_len} tokens ({self.batch * self.seq_len / self.chips:.0f} per chip)",
        ]
        if self.memory.get("error"):  # the compiler refused the program: no sizes, no collectives
            lines += [f"did not compile ({self.compile_s:.1f} s): DOES NOT FIT", f"  {self.memory['error']}"]
        else:
            lines += self._compiled_lines()
        lines.append(f"model FLOPs per step: {self.flops_per_step:.3e} (analytic, remat not counted)")
        e = self.estimate  # empty when the step did not compile
        if e:
            lines.append(
                f"roofline estimate: compute {e['compute_s'] * 1e3:.3g} ms (with "
                f"{e.get('recompute_flops', 0.0):.3e} FLOPs of remat recomputation), ICI {e['comm_s'] * 1e3:.3g} ms, "
                f"step >= {e['step_s'] * 1e3:.3g} ms, MFU <= {e['mfu'] * 100:.1f}% (estimate, not a measurement)"
            )
        return "\n".join(lines)

    def _compiled_lines(self) -> list[str]:
        """Compile time, per-chip HBM against the chip's, and the collectives of a compiled step."""
        m = self.memory
        lines = [
            f"compiled in {self.compile_s:.1f} s",
            "per-chip HBM: "
            + ", ".join(
                f"{k} {m[k] / GIB:.2f} GiB"
                for k in ("arguments", "outputs", "aliased", "temporaries", "total")
            ),
        ]
        if m.get("host_temporaries"):  # activations a remat policy offloads to the host
            lines.append(f"  and {m['host_temporaries'] / GIB:.2f} GiB of temporaries in host memory")
        if self.hbm_bytes:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(f"  {m['total'] / GIB:.2f} GiB of {self.hbm_bytes / GIB:.2f} GiB HBM: {verdict}")
        lines.append("collectives per step (bytes per chip sent, estimate):")
        for kind, s in sorted(self.collectives.items()):
            lines.append(
                f"  {kind:<18} {s['runs']:>5} runs ({s['ops']} ops)  {s['sent_bytes'] / GIB:8.3f} GiB sent  "
                f"largest {s['largest']}"
            )
        if not self.collectives:
            lines.append("  none")
        if self.weight_sized_all_reduces:
            lines.append("  weight-sized all-reduces: " + ", ".join(self.weight_sized_all_reduces[:8]))
        return lines


def _abstract_batch(cfg: TrainConfig, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    b, t = cfg.data.batch_size, cfg.data.seq_len
    spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)  # noqa: E731
    if cfg.data.mlm:
        return {"tokens": spec((b, t)), "labels": spec((b, t)), "attention_mask": spec((b, t))}
    return {"tokens": spec((b, t + 1))}


def build_train_step(cfg: TrainConfig, devices: list | None = None):
    """``(step, abstract state, abstract batch, mesh)`` of ``cfg`` on ``devices`` (default: local):
    the step :func:`jaxslim.training.train` runs (its methods composed by the same
    :func:`~jaxslim.training.run.build_steps`), on a state built abstractly (nothing allocated)."""
    mesh = make_mesh(cfg.mesh, devices)
    rules = cfg.mesh.rules
    methods = methods_of(cfg)
    for m in methods:
        m.restore({})  # a fresh run: the first stage
    built = build_steps(cfg, methods, mesh, rules)
    state, _ = create_abstract_train_state(built.make_model, built.tx, mesh, rules, seed=cfg.seed)
    return built.train, state, _abstract_batch(cfg, batch_sharding(mesh, rules)), mesh


def weight_sized(found: list[Collective], state: Any, *, kinds=("all-reduce",)) -> list[str]:
    """Collectives of ``kinds`` whose buffer is a whole weight matrix of one layer (its dimensions, in
    any order): what an all-reduced gradient looks like where FSDP should reduce-scatter it. A data-
    parallel all-reduce of an FSDP shard is smaller and not listed."""
    sizes = set()
    axes = jax.tree.leaves(logical_axes(state.params), is_leaf=lambda x: isinstance(x, tuple))
    for leaf, names in zip(jax.tree.leaves(state.params), axes, strict=True):
        # one layer's matrix: a scanned stack's layers axis left out
        shape = [n for n, a in zip(leaf.shape, names, strict=True) if a != LAYERS]
        if len(shape) >= 2:
            sizes.add(tuple(sorted(shape)))
    return [
        f"{c.dtype}[{','.join(map(str, c.shape))}] x{c.runs}"
        for c in found
        if c.kind in kinds and tuple(sorted(c.shape)) in sizes
    ]


def roofline(
    flops_per_chip: float, sent_bytes_per_chip: float, chip: Chip, recompute_per_chip: float = 0.0
) -> dict[str, float]:
    """Lower bound on step time from peak FLOP/s and ICI bandwidth, assuming perfect overlap, and
    the MFU bound it gives: model FLOPs (``flops_per_chip``) over peak times that step time, which
    also spends ``recompute_per_chip`` FLOPs on rematerialisation."""
    compute = (flops_per_chip + recompute_per_chip) / chip.peak_flops
    comm = sent_bytes_per_chip / chip.ici_bytes_per_s
    step = max(compute, comm)
    mfu = flops_per_chip / chip.peak_flops / step if step else 0.0
    return {"compute_s": compute, "comm_s": comm, "step_s": step, "mfu": mfu}


def compile_train_step(cfg: TrainConfig, topology: Topology | None = None) -> tuple[AotReport, Any]:
    """Compiles ``cfg``'s train step for ``topology`` (None: the local devices).

    Returns the report and the compiled executable. A step that needs more HBM than the chip has
    fails to compile on TPU; that is reported as ``fits=False`` with the compiler's message in
    ``memory["error"]`` instead of raised.
    """
    devices = topology_devices(topology) if topology is not None else jax.devices()
    step, state, batch, mesh = build_train_step(cfg, devices)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled, error = None, None
    try:
        compiled = lowered.compile()
    except Exception as e:  # the TPU compiler refuses a program larger than HBM
        if "RESOURCE_EXHAUSTED" not in str(e) and "exceeds" not in str(e).lower():
            raise
        error = str(e).strip().splitlines()[0][:500]
    compile_s = time.perf_counter() - start
    chip = topology.chip if topology is not None else None
    hbm = chip.hbm_bytes if chip else 0
    memory: dict[str, Any] = {}
    found: list[Collective] = []
    if compiled is not None:
        ma = compiled.memory_analysis()
        memory = {
            "arguments": ma.argument_size_in_bytes,
            "outputs": ma.output_size_in_bytes,
            "aliased": ma.alias_size_in_bytes,
            "temporaries": ma.temp_size_in_bytes,
            "generated_code": ma.generated_code_size_in_bytes,
            "host_temporaries": getattr(ma, "host_temp_size_in_bytes", 0),
        }
        memory["total"] = (
            memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
            + memory["generated_code"]
        )  # fmt: skip
        found = collectives(compiled.as_text())
    else:
        memory = dict.fromkeys(
            ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total"), 0
        )
        memory["error"] = error
    chips = len(devices)
    flops = train_flops(cfg.model, cfg.data.batch_size, cfg.data.seq_len)
    summary = summarize(found)
    report = AotReport(
        topology=topology.label() if topology else f"local {devices[0].platform}",
        chips=chips,
        mesh=dict(mesh.shape),
        batch=cfg.data.batch_size,
        seq_len=cfg.data.seq_len,
        hbm_bytes=hbm,
        memory=memory,
        fits=compiled is not None and (not hbm or memory["total"] <= hbm),
        compile_s=compile_s,
        flops_per_step=flops,
        collectives=summary,
        weight_sized_all_reduces=weight_sized(found, state),
    )
    if chip is not None and compiled is not None:
        sent = sum(s["sent_bytes"] for s in summary.values())
        recompute = remat_flops(cfg.model, cfg.data.batch_size, cfg.data.seq_len)
        report.estimate = roofline(flops / chips, sent, chip, recompute / chips)
        report.estimate["recompute_flops"] = recompute
    return report, compiled
