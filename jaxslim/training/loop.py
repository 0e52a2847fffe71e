"""The training loop: a ``TrainConfig`` in, a trained and checkpointed run directory out.

``train(cfg)`` builds the mesh, the data, the model and the optimizer, resumes from the run
directory's latest checkpoint when there is one, then steps, logs, evaluates, checkpoints and
profiles, and finally evaluates on the held-out split, draws the loss curves and samples text.
Everything that varies by method enters through the objective, loss terms and metric functions of
:func:`~jaxslim.engine.step.make_train_step`; the loop itself does not change.

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
import json
import logging
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
from flax import nnx

from jaxslim.checkpoint import Checkpointer, CorruptCheckpointError, checkpointer_from_config
from jaxslim.convert import load_hf, load_jaxslim
from jaxslim.convert.native import JAXSLIM_CONFIG
from jaxslim.data import TextData
from jaxslim.engine.state import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    count_params,
    create_train_state,
    make_setup,
    merge_model,
)
from jaxslim.engine.step import lm_objective, make_eval_step, make_train_step, mlm_objective
from jaxslim.grow import upcycle
from jaxslim.grow.stages import Staging
from jaxslim.models import Transformer, stack_layers, unstack_layers
from jaxslim.models.generate import generate
from jaxslim.moe import check_expert_mesh, consistency_objective, lm_positions, mlm_positions, moe_loss_term
from jaxslim.optim import build_optimizer, optimizer_metric_fns
from jaxslim.paths import absolute
from jaxslim.prune.transform import from_config as prune_from_config
from jaxslim.prune.transform import masked_params, sparsity_metrics, straight_through_params
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training.distributed import maybe_initialize
from jaxslim.training.metrics import default_writers
from jaxslim.training.rundir import RunDirectory, check_run_directory
from jaxslim.training.summary import param_table

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss or gradient norm is NaN or Inf (the update is never applied)."""


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


def evaluate(eval_step, state, batches, mesh, rules, *, max_batches: int = 0) -> dict:
    """Token-weighted mean loss and perplexity over ``batches`` (``max_batches`` 0: all of them)."""
    loss_sum = count = 0.0
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        m = jax.device_get(eval_step(state, shard_batch(batch, mesh, rules)))
        loss_sum += float(m["loss_sum"])
        count += float(m["count"])
    if count == 0:
        raise ValueError("evaluation got no tokens: the validation split is empty")
    loss = loss_sum / count
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count}


def _first_nonfinite(pending: list[tuple[int, Any]]) -> tuple[int, dict] | None:
    """The first (step, metrics) among ``pending`` whose update was refused as non-finite."""
    flags = jax.device_get([m["nonfinite"] for _, m in pending])
    for (step, metrics), flag in zip(pending, flags, strict=True):
        if int(flag):
            return step, {k: float(v) for k, v in jax.device_get(metrics).items()}
    return None


def _raise_nonfinite(step: int, metrics: dict, checkpointer) -> None:
    latest = None if checkpointer is None else checkpointer.latest_step()
    kept = (
        f"the last good checkpoint (step {latest}) is kept" if latest is not None else "no checkpoint exists"
    )
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {step} (loss={metrics.get('loss')}, "
        f"grad_norm={metrics.get('grad_norm')}); the update was not applied, training stopped and {kept}. "
        "Lower the learning rate, enable clipping (optim.clip_norm), or check the data."
    )


def _newest_extra(checkpointer) -> dict | None:
    """The ``extra`` of the newest checkpoint whose extra can be read (None without checkpoints);
    a damaged newest one is left for the restore's own fallback to report."""
    if checkpointer is None:
        return None

    for step in sorted(checkpointer.all_steps(), reverse=True):
        try:
            return checkpointer.extra(step)
        except CorruptCheckpointError:
            continue
    return None


def _restore(checkpointer, state: TrainState, train_iter):
    """Resumes ``state`` and the data position from the latest checkpoint, if there is one; returns
    the state, the step resumed from (None for a fresh start) and the checkpoint's ``extra``."""
    if checkpointer is None or checkpointer.latest_step() is None:
        return state, None, {}
    step = checkpointer.latest_step()
    # an unreadable newest step is moved aside, so this run saves that step again
    state, extra = checkpointer.restore(abstract_train_state(state), fallback=True, quarantine=True)
    if "data" not in extra:
        raise ValueError(f"checkpoint step {step} in {checkpointer.directory} has no data iterator position")
    train_iter.set_state(extra["data"])
    return state, int(jax.device_get(state.step)), extra


def initial_params(cfg, setup: TrainSetup, state: TrainState):
    """The parameters of ``cfg.init_from`` in ``state``'s layout and shardings (dense models are
    upcycled into ``cfg.model.moe`` experts).

    Raises:
        ValueError: the directory's model differs from ``cfg.model`` in anything but the experts
            and the layer layout; the message lists the differing fields.
    """

    path = absolute(cfg.init_from)
    if not path.is_dir():
        raise FileNotFoundError(f"TrainConfig.init_from={cfg.init_from!r} is not a model directory")
    model = load_jaxslim(path) if (path / JAXSLIM_CONFIG).is_file() else load_hf(path)
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


def objectives(cfg) -> tuple[Any, Any, tuple]:
    """``(train objective, eval objective, loss terms)`` of a training config: the task loss (masked
    or causal LM), THOR's two-view consistency objective for training when ``model.moe`` asks for
    it, and the MoE router losses."""
    objective = mlm_objective if cfg.data.mlm else lm_objective
    moe = cfg.model.moe
    if moe is None:
        return objective, objective, ()
    terms = (moe_loss_term(moe.aux_loss_coef, moe.z_loss_coef),)
    if not moe.consistency_alpha:
        return objective, objective, terms
    positions = mlm_positions if cfg.data.mlm else lm_positions
    fold = moe.granularity != "batch"  # per-sequence / per-token draws: one batch of both views
    return (
        consistency_objective(objective, moe.consistency_alpha, positions, fold_views=fold),
        objective,
        terms,
    )


def train(cfg, *, data=None, loss_terms=(), metric_fns=(), log_fns=(), progress: bool = True) -> TrainResult:
    """Runs, or resumes, the training described by ``cfg`` (a :class:`~jaxslim.config.TrainConfig`).

    Args:
        cfg: the training config.
        data: a prepared :class:`~jaxslim.data.TextData` (built from ``cfg.data`` when omitted).
        loss_terms / metric_fns: hooks passed to :func:`~jaxslim.engine.step.make_train_step`
            (auxiliary losses and metrics of later methods).
        log_fns: ``state -> metrics`` computed (jitted) at logged steps only, for metrics too costly
            or too many to compute every step. With ``cfg.prune`` the per-layer sparsity is one.
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
    # one run per directory: the lock is held until the run ends
    with RunDirectory(workdir, lock=jax.process_index() == 0):
        return _train(
            cfg,
            workdir,
            data=data,
            loss_terms=loss_terms,
            metric_fns=metric_fns,
            log_fns=log_fns,
            progress=progress,
        )


def _check_batch_fits_mesh(cfg) -> None:
    """The global batch splits evenly over the devices that share it (checked before any write)."""
    mesh = make_mesh(cfg.mesh)
    spec = batch_sharding(mesh, cfg.mesh.rules).spec
    axes = spec[0] if spec else None
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    shards = math.prod(mesh.shape[a] for a in names)
    if cfg.data.batch_size % shards:
        raise ValueError(
            f"DataConfig.batch_size={cfg.data.batch_size} must be a multiple of the {shards} devices the "
            f"batch is split over (mesh axes {', '.join(f'{a}={mesh.shape[a]}' for a in names)})"
        )


def _train(
    cfg, workdir: pathlib.Path, *, data, loss_terms, metric_fns, log_fns, progress: bool
) -> TrainResult:

    if cfg.model.vocab_size != data.vocab_size:
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(vocab_size=data.vocab_size))
    mesh = make_mesh(cfg.mesh)
    rules = cfg.mesh.rules
    params_view = straight_through_params if cfg.prune.enabled and cfg.prune.ste else None
    if cfg.prune.enabled:
        log_fns = (*log_fns, lambda state: sparsity_metrics(state.opt_state))
    if cfg.model.moe is not None:
        check_expert_mesh(cfg.model, mesh)
    train_objective, objective, method_terms = objectives(cfg)
    loss_terms = (*loss_terms, *method_terms)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        train_iter = data.train_iterator()
        checkpointer = None
        if cfg.checkpoint.every:
            # a plain or (checkpoint.compression) compressed checkpointer: the same interface
            checkpointer = checkpointer_from_config(
                cfg.checkpoint, workdir / "checkpoints", config_json=config_to_json(cfg)
            )
        # a staged run's checkpoint says which stage it is in before its state can be restored
        staging = Staging(cfg, _newest_extra(checkpointer))
        tx = _optimizer(cfg, staging)
        state, setup = create_train_state(
            lambda: Transformer(staging.model, rngs=nnx.Rngs(cfg.seed)), tx, mesh, rules, seed=cfg.seed
        )
        state, resumed_from, restored_extra = _restore(checkpointer, state, train_iter)
        if resumed_from is not None:
            # the FLOPs count and loss history of the checkpoint actually restored (an older one
            # when the latest was damaged); its stage must be the one the state was built for
            restored = Staging(cfg, restored_extra)
            if restored.stage != staging.stage:
                raise ValueError(
                    f"checkpoint step {resumed_from} in {checkpointer.directory} is in stage "
                    f"{restored.stage} but the latest checkpoint is in stage {staging.stage}"
                )
            staging = restored
        if resumed_from is None and cfg.init_from:
            state = state._replace(params=initial_params(cfg, setup, state))
            say(f"initialised the weights from {cfg.init_from}")
        if is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(config_to_json(cfg))
            data.save_tokenizer(workdir)
            say(param_table(state.params, max_rows=1000 if cfg.verbose else 40))
            say(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices")
        if cfg.prune.enabled and not cfg.prune.ste and cfg.prune.end_step > cfg.steps:
            say(
                f"warning: the pruning schedule reaches sparsity {cfg.prune.sparsity} at step "
                f"{cfg.prune.end_step}, after the last step {cfg.steps} of this run"
            )
        if resumed_from is not None:
            say(f"resuming from step {resumed_from} (checkpoint in {checkpointer.directory})")

        bsh = batch_sharding(mesh, rules)

        def steps_of(setup):
            train = make_train_step(
                setup,
                train_objective,
                accum_steps=cfg.accum_steps,
                loss_terms=loss_terms,
                metric_fns=(*metric_fns, *optimizer_metric_fns(cfg.optim)),
                batch_sharding=bsh,
                params_view=params_view,
                agvm_every=cfg.optim.agvm_every,
                agvm_start=cfg.optim.agvm_start,
            )
            return train, make_eval_step(setup, objective, batch_sharding=bsh, params_view=params_view)

        step_fn, eval_fn = steps_of(setup)
        log_fn = jax.jit(lambda st: {k: v for fn in log_fns for k, v in fn(st).items()})
        writer = default_writers(workdir, tensorboard=cfg.tensorboard)
        if resumed_from is None:
            writer.write_hparams(json.loads(config_to_json(cfg)))

        def run_eval(state):
            return evaluate(eval_fn, state, data.val_batches(), mesh, rules, max_batches=cfg.eval_batches)

        def checkpoint_extra():
            return {"data": train_iter.get_state(), **staging.extra()}

        start = resumed_from or 0
        if start >= staging.end_step:
            say(
                f"the run in {workdir} is already at step {start} of {staging.end_step}; raise --steps to go on"
            )
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        bar = _progress(start, staging.end_step, progress and is_main)
        last: dict = {}
        eval_metrics: dict = {}
        pending: list[tuple[int, Any]] = []
        t_last, steps_since = time.perf_counter(), 0
        try:
            step = start
            while step < staging.end_step:
                if staging.due(step):
                    state = _grow(
                        staging, state, tx, mesh, rules, step, checkpointer, checkpoint_extra, writer, say
                    )
                    tx = _optimizer(cfg, staging)
                    setup = make_setup(
                        lambda: Transformer(staging.model, rngs=nnx.Rngs(cfg.seed)), tx, mesh, rules
                    )
                    step_fn, eval_fn = steps_of(setup)
                    _save_grown(workdir, cfg, step, state, checkpoint_extra())
                    bar.total = staging.end_step
                    t_last, steps_since = time.perf_counter(), 0
                    continue
                if cfg.profile_steps and step == cfg.profile_start:
                    jax.profiler.start_trace(str(workdir / "profile"))
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = shard_batch(next(train_iter), mesh, rules)
                    state, metrics = step_fn(state, batch)
                if cfg.profile_steps and step + 1 == cfg.profile_start + cfg.profile_steps:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                done = step = step + 1
                if checkpointer is not None:
                    checkpointer.check()  # a failed background save stops the run here
                staging.flops += staging.step_flops()
                pending.append((done, metrics))
                steps_since += 1
                bar.update(1)
                end = staging.end_step
                is_log = done % cfg.log_every == 0 or done == end
                is_eval = done == end or (cfg.eval_every and done % cfg.eval_every == 0)
                is_save = checkpointer is not None and (done % cfg.checkpoint.every == 0 or done == end)
                if not (is_log or is_eval or is_save):
                    continue
                # one host sync per logged step: every pending step's finiteness flag is read here
                bad = _first_nonfinite(pending)
                if bad is not None:
                    _raise_nonfinite(*bad, checkpointer)
                if is_log:
                    for s, m in pending if cfg.log_every == 1 else pending[-1:]:
                        last = {k: float(v) for k, v in jax.device_get(m).items()}
                        writer.write_scalars(
                            s, {k: v for k, v in last.items() if k not in ("loss_sum", "count")}
                        )
                    if log_fns:
                        extra = {k: float(v) for k, v in jax.device_get(log_fn(state)).items()}
                        writer.write_scalars(done, extra)
                        last.update(extra)
                    now = time.perf_counter()
                    last["tokens_per_s"] = steps_since * tokens_per_step / (now - t_last)
                    last["flops"] = staging.flops
                    writer.write_scalars(done, {"tokens_per_s": last["tokens_per_s"], "flops": staging.flops})
                    t_last, steps_since = now, 0
                    bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                pending.clear()
                if is_eval:
                    eval_metrics = run_eval(state)
                    staging.record_eval(eval_metrics["eval_loss"])
                    writer.write_scalars(done, {**eval_metrics, "flops": staging.flops})
                writer.flush()  # metrics.jsonl is complete up to the last logged step
                if is_save:
                    checkpointer.save(done, state, extra=checkpoint_extra())
            if not eval_metrics:
                eval_metrics = run_eval(state)
            bar.close()
            if checkpointer is not None:
                checkpointer.close()  # waits for the last save: a failed one fails the run
        except BaseException as e:
            bar.close()
            writer.close()
            if checkpointer is not None:
                _close_quietly(checkpointer, e)
            raise
        try:
            baselines = data.ngram_baselines() if not cfg.data.mlm else {}
            sample = None
            if cfg.sample_tokens and is_main:
                view = (
                    state
                    if params_view is None
                    else state._replace(params=masked_params(state.params, state.opt_state))
                )
                sample = _sample(cfg, setup, view, data)
                (workdir / "samples.txt").write_text(sample + "\n")
                writer.write_texts(int(jax.device_get(state.step)), {"sample": sample})
        finally:
            writer.close()
    files = _finish(workdir, is_main)
    result = TrainResult(
        state, setup, cfg, workdir, resumed_from, last, eval_metrics, baselines, sample, files
    )
    if is_main:
        say(report(result))
    return result


def _close_quietly(checkpointer, current: BaseException) -> None:
    """Closes ``checkpointer`` while ``current`` is on its way up; a failed save is logged (unless it
    is ``current`` itself), not raised, so it cannot hide that error."""
    try:
        checkpointer.close()
    except Exception as e:
        if e is not current:
            log.error("%s", e)


def _optimizer(cfg, staging: Staging):
    """The run's optimizer in its current stage (the schedule re-warmed after the last growth)."""
    return prune_from_config(cfg.prune, build_optimizer(cfg.optim, cfg.steps, wrap_schedule=staging.schedule))


def _grow(staging: Staging, state, tx, mesh, rules, step: int, checkpointer, extra, writer, say):
    """The next stage's state: the state before growth is checkpointed first (and waited for)."""
    if checkpointer is not None and checkpointer.latest_step() != step:
        checkpointer.save(step, state, extra=extra(), force=True)
    if checkpointer is not None:
        checkpointer.wait()
    before = count_params(state)
    state = staging.grow(state, tx, mesh, rules, step)
    event = staging.events[-1]
    writer.write_scalars(
        step,
        {
            "growth": staging.stage,
            "growth/restart_step": event["restart_step"],
            "growth/params": count_params(state),
        },
    )
    writer.flush()
    say(
        f"grew the model at step {step} (stage {staging.stage}: {before / 1e6:.2f}M -> "
        f"{count_params(state) / 1e6:.2f}M parameters); the schedule continues from step "
        f"{event['restart_step']} and the run ends after step {staging.end_step}"
    )
    return state


def _save_grown(workdir: pathlib.Path, cfg, step: int, state, extra: dict) -> None:
    """The state right after a growth, in ``<workdir>/stages/grown-<stage>/`` (the checkpoint after
    each growth; the main directory holds the one before it)."""

    n = len(extra["stages"]["events"])
    with Checkpointer(
        workdir / "stages" / f"grown-{n}", max_to_keep=1, async_save=False, config_json=config_to_json(cfg)
    ) as ckpt:
        if step not in ckpt.all_steps():
            ckpt.save(step, state, extra=extra, force=True)


def _sample(cfg, setup: TrainSetup, state: TrainState, data) -> str:

    model = merge_model(setup, state)
    model.eval()
    prompt = data.tokenizer.encode(cfg.sample_prompt) or [data.tokenizer.eos_id]
    ids = generate(model, prompt, cfg.sample_tokens, rng=jax.random.key(cfg.seed), window=cfg.data.seq_len)
    return cfg.sample_prompt + data.tokenizer.decode(jax.device_get(ids).tolist())


def _finish(workdir: pathlib.Path, is_main: bool) -> dict:
    """Draws the loss curves and lists the run's files."""
    files = {
        "config": workdir / "config.json",
        "metrics": workdir / "metrics.jsonl",
        "tensorboard": workdir / "tb",
        "checkpoints": workdir / "checkpoints",
        "tokenizer": workdir / "tokenizer.json",
        "samples": workdir / "samples.txt",
    }
    if is_main:
        try:
            from jaxslim.training.plots import plot
        except ImportError:  # matplotlib is in the train extra
            log.warning("matplotlib is not installed: no loss.png")
        else:
            files["plot"] = plot([workdir], ["loss", "eval_loss"], workdir / "loss.png")
    return {k: p for k, p in files.items() if p.exists()}


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


def _progress(start: int, total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the train extra; run without a bar otherwise
        tqdm = None
    if tqdm is None or not enabled:
        return _NoBar()
    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass
