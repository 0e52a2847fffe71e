"""The training loop: a ``TrainConfig`` in, a trained and checkpointed run directory out.

``train(cfg)`` turns the config into the run's methods (:func:`methods_of`: the optimizer, growth
stages, pruning, MoE; each a :class:`~jaxslim.method.Method` its own package builds), then runs
setup -> restore-or-init -> steps with the methods' hooks -> finish (:class:`~jaxslim.training.run.Run`):
it resumes from the run directory's newest checkpoint when there is one, steps, logs, evaluates,
checkpoints and profiles, and finally evaluates on the held-out split, draws the loss curves and
samples text. The loop names no method: adding one touches no line here but :func:`methods_of`.

Run directory layout::

    config.json        the resolved config of the latest invocation
    tokenizer.json     the tokenizer the run was trained with
    metrics.jsonl      one JSON object per logged step (appended across resumes)
    tb/                TensorBoard events
    checkpoints/       Orbax checkpoints (state + data iterator position + config)
    loss.png           training and validation loss curves
    samples.txt        generated text (causal LM)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, NamedTuple

import jax
from flax import nnx

from jaxslim.config import TrainConfig
from jaxslim.convert.native import load_model
from jaxslim.data import TextData
from jaxslim.engine import TrainSetup, TrainState, count_params
from jaxslim.grow import upcycle
from jaxslim.grow.bundle import GrowthMethod
from jaxslim.method import Method
from jaxslim.models import stack_layers, unstack_layers
from jaxslim.moe.bundle import MoeMethod
from jaxslim.optim.bundle import OptimMethod
from jaxslim.paths import absolute
from jaxslim.prune.bundle import PruneMethod
from jaxslim.sharding import logical_to_spec, make_mesh, spec_axes, spec_shards
from jaxslim.training.distributed import maybe_initialize
from jaxslim.training.run import Run
from jaxslim.training.rundir import RunDirectory, check_run_directory


class TrainResult(NamedTuple):
    """What :func:`train` returns: the final state and everything the run reported."""

    state: TrainState
    setup: TrainSetup
    config: Any
    workdir: pathlib.Path
    resumed_from: int | None
    last_metrics: dict
    eval_metrics: dict
    baselines: dict
    sample: str | None
    files: dict


def config_to_json(cfg: Any) -> str:
    """The resolved config as JSON (dataclasses become dicts, tuples lists)."""
    return json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True, default=str)


def methods_of(cfg: TrainConfig) -> list[Method]:
    """The methods a training config asks for, in the order their wrappers apply: the optimizer
    (always), the growth stages (always: a run without stages is one stage, whose FLOPs it
    counts), gradual pruning (``cfg.prune.enabled``) and mixture of experts (``cfg.model.moe``)."""
    methods: list[Method] = [OptimMethod(cfg.optim, cfg.steps), GrowthMethod(cfg)]
    if cfg.prune.enabled:
        methods.append(PruneMethod(cfg.prune))
    if cfg.model.moe is not None:
        methods.append(MoeMethod(cfg.model, mlm=cfg.data.mlm))
    return methods


def train(
    cfg: TrainConfig, *, data: TextData | None = None, methods: tuple[Method, ...] = (), progress: bool = True
) -> TrainResult:
    """Runs, or resumes, the training described by ``cfg`` (a :class:`~jaxslim.config.TrainConfig`).

    Args:
        cfg: the training config.
        data: a prepared :class:`~jaxslim.data.TextData` (built from ``cfg.data`` when omitted).
        methods: more :class:`~jaxslim.method.Method` s, after those of the config
            (:func:`methods_of`), e.g. ``Method("aux", loss_terms=(term,))`` for an extra loss.
        progress: show a tqdm bar on process 0.

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: a step's loss or gradient was NaN or Inf; the step is named and the
            checkpoints written before it are kept.
        IncompatibleCheckpointError: the run directory holds a checkpoint of other shapes.
        RunDirectoryError: another live run holds the run directory, or it is a folder that is not
            a jaxslim run (nothing is written then).
        CheckpointSaveError: a checkpoint could not be saved; the run stops at the next step and
            the checkpoints saved before are kept.
    """
    maybe_initialize()
    workdir = check_run_directory(cfg.workdir)  # a folder that is not a run: refused before anything
    _check_batch_fits_mesh(cfg)
    data = data or TextData(cfg.data)  # a bad corpus fails here, before the run directory is claimed
    if cfg.model.vocab_size != data.vocab_size:
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(vocab_size=data.vocab_size))
    methods = (*methods_of(cfg), *methods)  # a config its methods refuse fails before any write
    with RunDirectory(workdir, lock=jax.process_index() == 0):  # one run per directory, until it ends
        run = Run(cfg, workdir, data, methods, config_json=config_to_json(cfg))
        with jax.set_mesh(run.mesh), nnx.logical_axis_rules(run.rules):
            run.restore_or_init(functools.partial(initial_params, cfg) if cfg.init_from else None)
            run.steps(progress=progress)
            try:
                baselines = data.ngram_baselines() if not cfg.data.mlm else {}
                sample = run.sample()
            finally:
                run.writer.close()
        result = TrainResult(
            run.state,
            run.setup,
            cfg,
            workdir,
            run.resumed_from,
            run.last_metrics,
            run.eval_metrics,
            baselines,
            sample,
            run.files(),
        )
        run.say(report(result))
        return result


def _check_batch_fits_mesh(cfg: TrainConfig) -> None:
    """The global batch splits evenly over the devices that share it, and a sequence over the
    context-parallel chunks (checked before any write)."""
    mesh = make_mesh(cfg.mesh)
    for logical, size, field, what in (
        ("batch", cfg.data.batch_size, "batch_size", "devices the batch is split over"),
        ("length", cfg.data.seq_len, "seq_len", "chunks context parallelism splits a sequence into"),
    ):
        spec = logical_to_spec((logical,), cfg.mesh.rules, mesh)
        entry = spec[0] if spec else None
        names, shards = spec_axes(entry), spec_shards(mesh, entry)
        if size % shards:
            raise ValueError(
                f"DataConfig.{field}={size} must be a multiple of the {shards} {what} "
                f"(mesh axes {', '.join(f'{a}={mesh.shape[a]}' for a in names)})"
            )


def initial_params(cfg: TrainConfig, setup: TrainSetup, state: TrainState):
    """The parameters of ``cfg.init_from`` in ``state``'s layout and shardings (dense models are
    upcycled into ``cfg.model.moe`` experts).

    Raises:
        ValueError: the directory's model differs from ``cfg.model`` in anything but the experts
            and the layer layout; the message lists the differing fields.
    """

    assert cfg.init_from is not None  # train() passes this function only then
    path = absolute(cfg.init_from)
    if not path.is_dir():
        raise FileNotFoundError(f"TrainConfig.init_from={cfg.init_from!r} is not a model directory")
    model = load_model(path)
    want = cfg.model
    if model.cfg.moe is None and want.moe is not None:
        model = upcycle(model, want.moe, seed=cfg.seed)
    if model.cfg.scan_layers != want.scan_layers:
        model = stack_layers(model) if want.scan_layers else unstack_layers(model)
    ignore = {"scan_layers", "remat", "dtype", "param_dtype", "pad_token_id", "max_len", "moe"}
    diff = [
        f"{f.name}: {getattr(model.cfg, f.name)!r} in {path}, {getattr(want, f.name)!r} in the config"
        for f in dataclasses.fields(want)
        if f.name not in ignore and getattr(model.cfg, f.name) != getattr(want, f.name)
    ]

    # of the experts only what shapes the weights must agree; routing and losses are the run's own
    def experts(c):
        return (
            None
            if c.moe is None
            else (c.moe.num_experts, c.moe.every, c.moe.offset, c.expert_ffn, c.moe.router)
        )

    if experts(model.cfg) != experts(want):
        diff.append(
            f"moe (num_experts, every, offset, expert width, router): {experts(model.cfg)} in {path}, "
            f"{experts(want)} in the config"
        )
    if model.cfg.max_len < want.max_len and not want.rope:
        diff.append(f"max_len: {model.cfg.max_len} in {path} < {want.max_len} in the config")
    if diff:
        raise ValueError("TrainConfig.init_from holds a different model:\n  " + "\n  ".join(diff))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if not want.rope and model.cfg.max_len != want.max_len:  # keep the first rows of the table
        pure["embed"]["positions"] = pure["embed"]["positions"][: want.max_len]
    params = jax.tree.map(lambda x: x, state.params)
    nnx.replace_by_pure_dict(params, pure)
    dtype = jax.numpy.dtype(want.param_dtype)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    return jax.device_put(params, setup.shardings.params)


def report(result: TrainResult) -> str:
    """A short human summary: losses against the n-gram baselines, a sample, where the files are."""
    cfg, lines = result.config, []
    step = int(jax.device_get(result.state.step))
    lines.append(f"\n{cfg.model.arch} with {count_params(result.state) / 1e6:.2f}M parameters, step {step}")
    if result.resumed_from is not None:
        lines.append(f"resumed from the checkpoint of step {result.resumed_from}")
    if result.last_metrics:
        lines.append(f"train loss {result.last_metrics['loss']:.3f}")
        if "sparsity/overall" in result.last_metrics:
            lines.append(
                f"pruned {result.last_metrics['sparsity/overall']:.1%} of the prunable weights "
                f"({cfg.prune.kind}; per layer in metrics.jsonl as sparsity/<param>/layer_<i>)"
            )
    ev = result.eval_metrics
    if ev:
        lines.append(
            f"validation loss {ev['eval_loss']:.3f} nats/token (perplexity {ev['eval_perplexity']:.1f}, "
            f"{int(ev['eval_tokens'])} tokens)"
        )
    partial = " (the model was scored on the first eval_batches only)" if cfg.eval_batches else ""
    for name, value in result.baselines.items():
        if not name.endswith("_k"):  # the smoothing constants, not losses
            lines.append(f"  {name} baseline on the whole validation split: {value:.3f}{partial}")
    if result.sample:
        lines.append("sample:\n" + "-" * 60 + "\n" + result.sample + "\n" + "-" * 60)
    lines.append("files:")
    lines += [f"  {k:<12} {p}" for k, p in result.files.items()]
    return "\n".join(lines)
