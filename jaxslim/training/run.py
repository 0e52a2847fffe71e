"""One training run, in the order :func:`jaxslim.training.train` drives it: build from the methods,
restore or initialise, step with hooks, finish.

:class:`Run` holds what the methods' hooks may read (config, mesh, rules, state, step, optimizer,
checkpointer, metric writer, ``say``); it knows no method by name. The methods decide the model
config, schedule, optimizer, objective, loss terms, metrics, parameter view, end step and what each
checkpoint's ``extra`` carries; a ``"before_step"`` hook that returns a new state (growth) makes the
run rebuild its optimizer, model graph and step functions from them.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
from flax import nnx

from jaxslim.checkpoint import CorruptCheckpointError, checkpointer_from_config
from jaxslim.engine import (
    TrainSetup,
    TrainState,
    abstract_train_state,
    create_train_state,
    lm_objective,
    make_eval_step,
    make_setup,
    make_train_step,
    merge_model,
    mlm_objective,
)
from jaxslim.method import Method, compose
from jaxslim.models import Transformer
from jaxslim.models.generate import generate
from jaxslim.sharding import batch_sharding, make_mesh, shard_batch
from jaxslim.training.metrics import default_writers
from jaxslim.training.summary import param_table

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a step's loss or gradient norm is NaN or Inf (the update is never applied)."""


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


class Steps(NamedTuple):
    """What :func:`build_steps` builds: the optimizer, the model factory, the setup and the steps."""

    tx: Any
    make_model: Callable[[], Transformer]
    setup: TrainSetup
    train: Callable
    eval: Callable
    log: Callable | None  # the methods' log metrics (jitted); None when they have none


def build_steps(cfg, methods: Sequence[Method], mesh, rules) -> Steps:
    """The train and eval steps of ``cfg`` composed from ``methods`` in their current state: the
    model config and schedule they set, the optimizer they build and wrap (in order), the task
    objective they wrap, their loss terms, metrics, step options and parameter view. The training
    loop and ``jaxslim-aot`` build their steps here, so the step compiled ahead of time is the one
    training runs."""
    model_cfg = compose([m.model_config for m in methods], cfg.model)
    wrap = lambda s: compose([m.schedule for m in methods], s)  # noqa: E731
    tx = None
    for m in methods:
        tx = m.optimizer(tx, wrap)
    make_model = lambda: Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed))  # noqa: E731
    setup = make_setup(make_model, tx, mesh, rules)
    task = mlm_objective if cfg.data.mlm else lm_objective
    views = [m.params_view for m in methods if m.params_view is not None]
    if len(views) > 1:
        raise ValueError(f"two methods set the parameter view: {[m.name for m in methods]}")
    view = views[0] if views else None
    options = {k: v for m in methods for k, v in m.step_options.items()}
    bsh = batch_sharding(mesh, rules)
    train = make_train_step(
        setup,
        compose([m.objective for m in methods], task),
        accum_steps=cfg.accum_steps,
        loss_terms=tuple(t for m in methods for t in m.loss_terms),
        metric_fns=tuple(f for m in methods for f in m.metric_fns),
        batch_sharding=bsh,
        params_view=view,
        **options,
    )
    evaluate_step = make_eval_step(setup, task, batch_sharding=bsh, params_view=view)
    log_fns = tuple(f for m in methods for f in m.log_fns)
    log = jax.jit(lambda st: {k: v for fn in log_fns for k, v in fn(st).items()}) if log_fns else None
    return Steps(tx, make_model, setup, train, evaluate_step, log)


class Run:
    """A training run in progress (see the module doc)."""

    def __init__(self, cfg, workdir: pathlib.Path, data, methods: Sequence[Method], *, config_json: str):
        self.cfg, self.workdir, self.data, self.methods = cfg, workdir, data, tuple(methods)
        self.config_json = config_json
        self.mesh, self.rules = make_mesh(cfg.mesh), cfg.mesh.rules
        self.is_main = jax.process_index() == 0
        self.say: Callable[..., None] = print if self.is_main else (lambda *a, **k: None)
        self.train_iter = data.train_iterator()
        self.checkpointer = None
        if cfg.checkpoint.every:  # plain or compressed (checkpoint.compression): one interface
            self.checkpointer = checkpointer_from_config(
                cfg.checkpoint, workdir / "checkpoints", config_json=config_json
            )
        self.writer: Any = None
        self.state: Any = None
        self.step = 0
        self.resumed_from: int | None = None
        self.eval_metrics: dict = {}
        self.last_metrics: dict = {}

    # -- what the methods compose -------------------------------------------------------------
    @property
    def end_step(self) -> int:
        return compose([m.end_step for m in self.methods], self.cfg.steps)

    def checkpoint_extra(self) -> dict:
        """What every checkpoint's ``extra`` carries: the data position and each method's state."""
        extra = {"data": self.train_iter.get_state()}
        for m in self.methods:
            extra.update(m.extra())
        return extra

    def build(self) -> None:
        """The optimizer, model graph and step functions of the methods' current state."""
        built = build_steps(self.cfg, self.methods, self.mesh, self.rules)
        self.tx, self.make_model, self.setup = built.tx, built.make_model, built.setup
        self.step_fn, self.eval_fn, self.log_fn = built.train, built.eval, built.log

    # -- restore or initialise ------------------------------------------------------------------
    def restore_or_init(self, initial_params: Callable[[Any, Any], Any] | None) -> None:
        """Builds the state, resumes it (and the data position) from the newest readable
        checkpoint, or initialises it (from ``initial_params(setup, state)`` when given)."""
        warnings = [w for m in self.methods for w in m.start(self)]  # refusals come before any write
        newest = _newest_extra(self.checkpointer)
        for m in self.methods:  # a staged run's checkpoint says which model to build
            m.restore(newest or {})
        self.build()
        self.state, _ = create_train_state(
            self.make_model, self.tx, self.mesh, self.rules, seed=self.cfg.seed
        )
        ckpt = self.checkpointer
        if ckpt is not None and ckpt.latest_step() is not None:
            # an unreadable newest step is moved aside, so this run saves that step again
            self.state, extra = ckpt.restore(abstract_train_state(self.state), fallback=True, quarantine=True)
            self.resumed_from = int(jax.device_get(self.state.step))
            if "data" not in extra:
                raise ValueError(
                    f"checkpoint step {self.resumed_from} in {ckpt.directory} has no data iterator position"
                )
            self.train_iter.set_state(extra["data"])
            for m in self.methods:  # the checkpoint actually restored (older when the newest was damaged)
                m.restore(extra)
        elif initial_params is not None:
            self.state = self.state._replace(params=initial_params(self.setup, self.state))
            self.say(f"initialised the weights from {self.cfg.init_from}")
        self.step = self.resumed_from or 0
        if self.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "config.json").write_text(self.config_json)
            self.data.save_tokenizer(self.workdir)
            self.say(param_table(self.state.params, max_rows=1000 if self.cfg.verbose else 40))
            self.say(
                f"mesh {dict(self.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices"
            )
        for warning in warnings:
            self.say(warning)
        if ckpt is not None and self.resumed_from is not None:
            self.say(f"resuming from step {self.resumed_from} (checkpoint in {ckpt.directory})")
        self.writer = default_writers(self.workdir, tensorboard=self.cfg.tensorboard)
        if self.resumed_from is None:
            self.writer.write_hparams(json.loads(self.config_json))

    # -- steps ------------------------------------------------------------------------------------
    def _hooks(self, at: str, step: int) -> list:
        return [h.fn(self) for m in self.methods for h in m.hooks if h.due(at, step)]

    def run_eval(self) -> dict:
        self.eval_metrics = evaluate(
            self.eval_fn,
            self.state,
            self.data.val_batches(),
            self.mesh,
            self.rules,
            max_batches=self.cfg.eval_batches,
        )
        return self.eval_metrics

    def steps(self, *, progress: bool) -> None:
        """Steps to the end, with the methods' hooks, logging, evaluation and checkpoints; a
        failure closes the writer and checkpointer without hiding the error."""
        cfg, ckpt = self.cfg, self.checkpointer
        if self.step >= self.end_step:
            self.say(
                f"the run in {self.workdir} is already at step {self.step} of {self.end_step}; raise --steps to go on"
            )
        bar = _progress(self.step, self.end_step, progress and self.is_main)
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        pending: list[tuple[int, Any]] = []
        t_last, since = time.perf_counter(), 0
        try:
            while self.step < self.end_step:
                grown = [s for s in self._hooks("before_step", self.step) if s is not None]
                if grown:  # a new model: rebuild the optimizer, graph and steps around it
                    self.state = grown[-1]
                    self.build()
                    bar.total = self.end_step
                    t_last, since = time.perf_counter(), 0
                    continue
                if cfg.profile_steps and self.step == cfg.profile_start:
                    jax.profiler.start_trace(str(self.workdir / "profile"))
                with jax.profiler.StepTraceAnnotation("train", step_num=self.step):
                    batch = shard_batch(next(self.train_iter), self.mesh, self.rules)
                    self.state, metrics = self.step_fn(self.state, batch)
                if cfg.profile_steps and self.step + 1 == cfg.profile_start + cfg.profile_steps:
                    jax.block_until_ready(self.state)
                    jax.profiler.stop_trace()
                done = self.step = self.step + 1
                if ckpt is not None:
                    ckpt.check()  # a failed background save stops the run here
                self._hooks("after_step", done)
                pending.append((done, metrics))
                since += 1
                bar.update(1)
                end = self.end_step
                is_log = done % cfg.log_every == 0 or done == end
                is_eval = done == end or (cfg.eval_every and done % cfg.eval_every == 0)
                is_save = ckpt is not None and (done % cfg.checkpoint.every == 0 or done == end)
                if not (is_log or is_eval or is_save):
                    continue
                bad = _first_nonfinite(pending)  # one host sync per logged step
                if bad is not None:
                    _raise_nonfinite(*bad, ckpt)
                if is_log:
                    now = time.perf_counter()
                    self._log(pending, done, since * tokens_per_step / (now - t_last))
                    t_last, since = now, 0
                    bar.set_postfix(
                        loss=f"{self.last_metrics['loss']:.3f}",
                        tok_s=f"{self.last_metrics['tokens_per_s']:.0f}",
                    )
                pending.clear()
                if is_eval:
                    self.run_eval()
                    self._hooks("eval", done)
                    self.writer.write_scalars(done, {**self.eval_metrics, **self._hook_metrics("log", done)})
                self.writer.flush()  # metrics.jsonl is complete up to the last logged step
                if ckpt is not None and is_save:
                    ckpt.save(done, self.state, extra=self.checkpoint_extra())
                    self._hooks("save", done)
            if not self.eval_metrics:
                self.run_eval()
            bar.close()
            if ckpt is not None:
                ckpt.close()  # waits for the last save: a failed one fails the run
        except BaseException as e:
            bar.close()
            self.writer.close()
            if ckpt is not None:
                _close_quietly(ckpt, e)
            raise

    def _hook_metrics(self, at: str, step: int) -> dict:
        return {k: v for found in self._hooks(at, step) if found for k, v in found.items()}

    def _log(self, pending: list, done: int, tokens_per_s: float) -> None:
        for s, m in pending if self.cfg.log_every == 1 else pending[-1:]:
            self.last_metrics = {k: float(v) for k, v in jax.device_get(m).items()}
            self.writer.write_scalars(
                s, {k: v for k, v in self.last_metrics.items() if k not in ("loss_sum", "count")}
            )
        if self.log_fn is not None:
            extra = {k: float(v) for k, v in jax.device_get(self.log_fn(self.state)).items()}
            self.writer.write_scalars(done, extra)
            self.last_metrics.update(extra)
        hooked = {"tokens_per_s": tokens_per_s, **self._hook_metrics("log", done)}
        self.last_metrics.update(hooked)
        self.writer.write_scalars(done, hooked)

    # -- finish -----------------------------------------------------------------------------------
    def sample(self) -> str | None:
        """Generated text from the finished model (causal LM with ``sample_tokens``), saved in
        ``samples.txt``; None otherwise."""
        cfg = self.cfg
        if not (cfg.sample_tokens and self.is_main):
            return None
        params = self.state.params
        for m in self.methods:
            params = m.sample_params(params, self.state.opt_state)
        model = merge_model(self.setup, self.state._replace(params=params))
        model.eval()
        prompt = self.data.tokenizer.encode(cfg.sample_prompt) or [self.data.tokenizer.eos_id]
        ids = generate(
            model, prompt, cfg.sample_tokens, rng=jax.random.key(cfg.seed), window=cfg.data.seq_len
        )
        text = cfg.sample_prompt + self.data.tokenizer.decode(jax.device_get(ids).tolist())
        (self.workdir / "samples.txt").write_text(text + "\n")
        self.writer.write_texts(int(jax.device_get(self.state.step)), {"sample": text})
        return text

    def files(self) -> dict:
        """Draws the loss curves and lists the run's files."""
        wd = self.workdir
        files = {
            "config": wd / "config.json",
            "metrics": wd / "metrics.jsonl",
            "tensorboard": wd / "tb",
            "checkpoints": wd / "checkpoints",
            "tokenizer": wd / "tokenizer.json",
            "samples": wd / "samples.txt",
        }
        if self.is_main:
            try:
                from jaxslim.training.plots import plot  # matplotlib is optional (the train extra)
            except ImportError:
                log.warning("matplotlib is not installed: no loss.png")
            else:
                files["plot"] = plot([wd], ["loss", "eval_loss"], wd / "loss.png")
        return {k: p for k, p in files.items() if p.exists()}


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


def _close_quietly(checkpointer, current: BaseException) -> None:
    """Closes ``checkpointer`` while ``current`` is on its way up; a failed save is logged (unless it
    is ``current`` itself), not raised, so it cannot hide that error."""
    try:
        checkpointer.close()
    except Exception as e:
        if e is not current:
            log.error("%s", e)


def _progress(start: int, total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm  # the train extra; without it the run has no bar
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        return _NoBar()
    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


class _NoBar:
    total = 0

    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


__all__ = ["NonFiniteLossError", "Run", "TrainState", "evaluate"]
