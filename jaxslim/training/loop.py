"""The training loop: config in, a trained and checkpointed run directory out.

``train(cfg)`` resolves the config, builds the mesh, the data, the model and the optimizer, resumes
from the run directory's latest checkpoint when there is one, then steps, logs, evaluates,
checkpoints and profiles. Everything that varies by method enters through the objective, loss
terms and metric functions of :func:`~jaxslim.training.step.make_train_step`.
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

from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training.distributed import maybe_initialize
from jaxslim.training.metrics import default_writers
from jaxslim.training.state import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    create_train_state,
)
from jaxslim.training.step import lm_objective, make_eval_step, make_train_step, mlm_objective
from jaxslim.training.summary import param_table

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss or gradient norm is NaN or Inf."""


class TrainResult(NamedTuple):
    state: TrainState
    setup: TrainSetup
    workdir: pathlib.Path
    resumed_from: int | None
    last_metrics: dict
    eval_metrics: dict


def config_to_json(cfg: Any) -> str:
    """The resolved config as JSON (dataclasses become dicts, tuples lists)."""
    return json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True, default=str)


def evaluate(eval_step, state, batches, mesh, rules, *, max_batches: int | None = None) -> dict:
    """Mean loss and perplexity over ``batches`` (token-weighted, exact across batches)."""
    loss_sum = count = 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        m = jax.device_get(eval_step(state, shard_batch(batch, mesh, rules)))
        loss_sum += float(m["loss_sum"])
        count += float(m["count"])
    if count == 0:
        raise ValueError("evaluation got no tokens: the validation split is empty")
    loss = loss_sum / count
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_tokens": count}


def _check_finite(step: int, metrics: dict, checkpointer) -> None:
    if int(metrics.get("nonfinite", 0)):
        latest = None if checkpointer is None else checkpointer.latest_step()
        kept = (
            f"the last good checkpoint (step {latest}) is kept"
            if latest is not None
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step} (loss={metrics.get('loss')}, "
            f"grad_norm={metrics.get('grad_norm')}); the update was not applied and {kept}. "
            "Lower the learning rate, enable clipping, or check the data."
        )


def train(cfg, *, data=None, loss_terms=(), metric_fns=(), progress: bool = True) -> TrainResult:
    """Runs (or resumes) the training described by ``cfg`` (a :class:`~jaxslim.config.TrainConfig`).

    Args:
        cfg: the training config.
        data: a prepared :class:`~jaxslim.data.TextData` (built from ``cfg.data`` when omitted).
        loss_terms / metric_fns: hooks passed to :func:`~jaxslim.training.step.make_train_step`.
        progress: show a tqdm bar on process 0.
    """
    from jaxslim.checkpoint import Checkpointer
    from jaxslim.data import TextData

    maybe_initialize()
    workdir = pathlib.Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = data or TextData(cfg.data)
    model_cfg = (
        cfg.model
        if cfg.model.vocab_size == data.vocab_size
        else cfg.model.replace(vocab_size=data.vocab_size)
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)
    mesh = make_mesh(cfg.mesh)
    rules = cfg.mesh.rules
    tx = build_optimizer(cfg.optim, cfg.steps)
    objective = mlm_objective if cfg.data.mlm else lm_objective

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        state, setup = create_train_state(
            lambda: Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed)), tx, mesh, rules, seed=cfg.seed
        )
        checkpointer = None
        if cfg.checkpoint.every:
            checkpointer = Checkpointer(
                workdir / "checkpoints",
                max_to_keep=cfg.checkpoint.keep,
                keep_every=cfg.checkpoint.keep_every or None,
                async_save=cfg.checkpoint.async_save,
                config_json=config_to_json(cfg),
            )
        resumed_from = None
        train_iter = data.train_iterator(process_index=jax.process_index(), process_count=jax.process_count())
        if checkpointer is not None and checkpointer.latest_step() is not None:
            resumed_from = checkpointer.latest_step()
            state, extra = checkpointer.restore(abstract_train_state(state))
            train_iter.set_state(extra["data"])
            print(f"resuming from step {resumed_from} in {workdir}")
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config_to_json(cfg))
            data.save_tokenizer(workdir)
            print(param_table(state.params, max_rows=0 if not cfg.verbose else 200))

        bsh = batch_sharding(mesh, rules)
        step_fn = make_train_step(
            setup,
            objective,
            accum_steps=cfg.accum_steps,
            loss_terms=loss_terms,
            metric_fns=metric_fns,
            batch_sharding=bsh,
        )
        eval_fn = make_eval_step(setup, objective, batch_sharding=bsh)
        writer = default_writers(workdir, tensorboard=cfg.tensorboard)
        if resumed_from is None:
            writer.write_hparams(json.loads(config_to_json(cfg)))
        start = int(jax.device_get(state.step))
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        bar = _progress(start, cfg.steps, progress)
        last, eval_metrics, t_last, steps_since = {}, {}, time.perf_counter(), 0
        try:
            for step in range(start, cfg.steps):
                profiling = cfg.profile_steps and step == cfg.profile_start
                if profiling:
                    jax.profiler.start_trace(str(workdir / "profile"))
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    batch = shard_batch(next(train_iter), mesh, rules)
                    state, metrics = step_fn(state, batch)
                if cfg.profile_steps and step == cfg.profile_start + cfg.profile_steps - 1:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                steps_since += 1
                done = step + 1
                is_log = done % cfg.log_every == 0 or done == cfg.steps
                is_eval = cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps)
                is_save = checkpointer is not None and (done % cfg.checkpoint.every == 0 or done == cfg.steps)
                if is_log or is_eval or is_save:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    _check_finite(done, last, checkpointer)
                if is_log:
                    now = time.perf_counter()
                    last["steps_per_s"] = steps_since / (now - t_last)
                    last["tokens_per_s"] = last["steps_per_s"] * tokens_per_step
                    t_last, steps_since = now, 0
                    writer.write_scalars(
                        done, {k: v for k, v in last.items() if k not in ("loss_sum", "count")}
                    )
                    bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if is_eval:
                    eval_metrics = evaluate(
                        eval_fn, state, data.val_batches(), mesh, rules, max_batches=cfg.eval_batches
                    )
                    writer.write_scalars(done, eval_metrics)
                if is_save:
                    checkpointer.save(done, state, extra={"data": train_iter.get_state()})
                bar.update(1)
        finally:
            bar.close()
            writer.flush()
            writer.close()
            if checkpointer is not None:
                checkpointer.wait()
    return TrainResult(state, setup, workdir, resumed_from, last, eval_metrics)


def _progress(start: int, total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the train extra; run without a bar otherwise
        tqdm = None
    if tqdm is None or not enabled or jax.process_index() != 0:
        return _NoBar()
    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass
