"""A method's part in a training run, as one object the training loop composes.

Each method package turns its own config section into a :class:`Method` (``jaxslim.optim.bundle``,
``jaxslim.prune.bundle``, ``jaxslim.moe.bundle``, ``jaxslim.grow.bundle``); the loop
(:func:`jaxslim.training.train`) builds the run from the list of them and never asks which method
it holds. Every part has a neutral default, so a method states only what it changes:

- what the run is built from: the model config (growth's current stage), the learning-rate
  schedule (re-warmed after a growth), the optimizer (the base optimizer, then wrappers such as
  pruning's masks), the training objective (THOR's two views), auxiliary loss terms, step metrics,
  keyword options of :func:`~jaxslim.engine.make_train_step`, the parameter view the forward pass
  sees (straight-through masks) and the parameters a finished run samples with;
- what it keeps across resumes: :meth:`Method.extra` is small JSON saved in every checkpoint, read
  back by :meth:`Method.restore` before the state is built;
- when it acts: :class:`Hook` s before and after steps, at logged steps, evaluations and saves,
  each ``every`` steps.

A hook is called with the run (``jaxslim.training.loop.Run``: config, mesh, rules, state, step,
checkpointer, metric writer, ...). A ``"before_step"`` hook may return a new train state (growth);
the loop then rebuilds the optimizer, the model graph and the step functions from the methods.

Example:
    >>> class Every10(Method):
    ...     name = "tick"
    ...     def __init__(self):
    ...         self.hooks = (Hook(lambda run: print("step", run.step), every=10, at="after_step"),)
    >>> [h.every for h in Every10().hooks]
    [10]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

HookPoint = Literal["before_step", "after_step", "log", "eval", "save"]
HOOK_POINTS: tuple[str, ...] = ("before_step", "after_step", "log", "eval", "save")


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn(run)`` called at ``at`` when the run's step is a multiple of ``every``.

    Points: ``"before_step"`` (before an update; may return a new train state), ``"after_step"``
    (after every update), ``"log"`` (at logged steps; returns metrics to log, or None) and
    ``"eval"`` (after an evaluation; ``run.eval_metrics`` holds its result) and ``"save"`` (after a
    checkpoint save was started).
    """

    fn: Callable[[Any], Any]
    every: int = 1
    at: HookPoint = "after_step"

    def __post_init__(self):
        if self.at not in HOOK_POINTS:
            raise ValueError(f"Hook.at must be one of {HOOK_POINTS}, got {self.at!r}")
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise ValueError(f"Hook.every must be an integer >= 1, got {self.every!r}")

    def due(self, at: str, step: int) -> bool:
        return self.at == at and step % self.every == 0


class Method:
    """One method's contributions to a training run (see the module doc); all defaults are no-ops."""

    name: str = "method"
    loss_terms: Sequence[Callable] = ()
    metric_fns: Sequence[Callable] = ()
    log_fns: Sequence[Callable] = ()  # state -> metrics, jitted, computed at logged steps only
    step_options: Mapping[str, Any] = {}  # keyword arguments of make_train_step
    params_view: Callable | None = None  # (params, opt_state) -> params the forward pass sees
    hooks: Sequence[Hook] = ()

    def __init__(self, name: str = "method", **parts: Any):
        """A method from its parts, without a subclass: e.g. ``Method("aux", loss_terms=(term,))``
        adds a loss term to a run (parts: ``loss_terms``, ``metric_fns``, ``log_fns``,
        ``step_options``, ``params_view``, ``hooks``)."""
        known = ("loss_terms", "metric_fns", "log_fns", "step_options", "params_view", "hooks")
        unknown = sorted(set(parts) - set(known))
        if unknown:
            raise TypeError(f"Method parts are {known}; unknown: {unknown}")
        self.name = name
        for key, value in parts.items():
            setattr(
                self, key, tuple(value) if key in ("loss_terms", "metric_fns", "log_fns", "hooks") else value
            )

    def model_config(self, cfg: Any) -> Any:
        """The model the run builds now (from the run's model config)."""
        return cfg

    def schedule(self, schedule: Callable) -> Callable:
        """The learning-rate schedule, given the one built so far."""
        return schedule

    def optimizer(self, tx: Any, wrap_schedule: Callable[[Callable], Callable]) -> Any:
        """The optimizer, given the one built so far (None before the first method that builds one)
        and the composed schedule wrapper of all methods."""
        return tx

    def objective(self, objective: Callable) -> Callable:
        """The training objective, given the task's."""
        return objective

    def sample_params(self, params: Any, opt_state: Any) -> Any:
        """The parameters a finished run samples and reports with (e.g. with masks applied)."""
        return params

    def end_step(self, steps: int) -> int:
        """The optimizer step the run ends at, given the configured ``steps``."""
        return steps

    def start(self, run: Any) -> Sequence[str]:
        """Checks against the built run (mesh, steps); returns warnings to print."""
        return ()

    def restore(self, extra: Mapping[str, Any]) -> None:
        """Reads this method's state back from a checkpoint's ``extra``."""

    def extra(self) -> dict[str, Any]:
        """Small JSON this method keeps in every checkpoint."""
        return {}


def compose(fns: Sequence[Callable[[Any], Any]], value: Any) -> Any:
    """``fns[-1](...fns[0](value))``: how the loop folds the methods' wrappers, in method order."""
    for fn in fns:
        value = fn(value)
    return value
