"""Staged training: the models of a staged run, when each growth happens, what it does to the run.

A staged run's config names the final model and its stages (:class:`~jaxslim.config.StageConfig`);
:func:`stage_models` derives the model of every stage by shrinking the final one. :class:`Staging`
keeps what the training loop needs across growths and resumes: the growth events so far (each
with its step, the schedule step the grown model continues from, and the FLOPs spent), the
(FLOPs, validation loss) points of the current stage for the slope rule, and the FLOPs spent. All
of it is small JSON that travels in every checkpoint's ``extra`` item, so a resumed run rebuilds the
right model, optimizer schedule and step count before it restores the state.

Step bookkeeping: ``state.step`` counts optimizer updates, whatever the model. A growth at update
``a`` sets the schedule's count to ``R + 1`` (:func:`~jaxslim.optim.rewarm.grown_schedule_step`),
so from then on the schedule step is ``step + (R + 1 - a)`` and the run ends when the schedule does:
after ``steps - (R + 1 - a)`` updates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxslim.config import ModelConfig, StageConfig, TrainConfig
from jaxslim.grow.depth import Deepen
from jaxslim.grow.planner import (
    CONSTANTS,
    THRESHOLDS,
    restart_step,
    slope_growth_index,
    train_flops_per_token,
)
from jaxslim.grow.state import grow_train_state
from jaxslim.grow.width import Widen, narrow_config
from jaxslim.optim.rewarm import grown_schedule_step, rewarm_schedule


def stage_ops(stage: StageConfig) -> list:
    """The growth operators of a stage, in the order they apply (width, then depth)."""
    ops: list = []
    if stage.width > 1:
        ops.append(Widen(stage.width))
    if stage.depth > 1:
        ops.append(Deepen(stage.depth_mode, stage.placement))
    return ops


def start_model(final: ModelConfig, stages: tuple[StageConfig, ...]) -> ModelConfig:
    """The model a staged run starts from: ``final`` shrunk by every stage, last stage first.

    Raises:
        ValueError: a stage does not fit, named with the stage: a width factor that does not
            divide the widths and heads, an odd number of layers to halve, or an operator the
            model refuses (identity blocks in a post-norm model, depth growth of experts).
    """
    cfg = final
    for i in reversed(range(len(stages))):
        stage = stages[i]
        small = cfg
        try:
            if stage.depth > 1:
                if small.n_layers % 2:
                    raise ValueError(
                        f"depth growth doubles the stack, so n_layers={small.n_layers} must be even"
                    )
                small = small.replace(n_layers=small.n_layers // 2)
            if stage.width > 1:
                small = narrow_config(small, stage.width)
            grown = small
            for op in stage_ops(stage):
                grown = op.config(grown)
        except ValueError as e:
            raise ValueError(f"TrainConfig.stages[{i}] does not fit the model: {e}") from e
        if grown != cfg:
            raise ValueError(f"TrainConfig.stages[{i}]: growing {small} does not give {cfg}")
        cfg = small
    return cfg


def stage_models(final: ModelConfig, stages: tuple[StageConfig, ...]) -> list[ModelConfig]:
    """The model of every stage: the start model, then the model after each growth."""
    models = [start_model(final, stages)]
    for stage in stages:
        cfg = models[-1]
        for op in stage_ops(stage):
            cfg = op.config(cfg)
        models.append(cfg)
    return models


class Staging:
    """The staged-run bookkeeping of a :class:`~jaxslim.config.TrainConfig` (see the module doc)."""

    def __init__(self, cfg: TrainConfig, extra: dict[str, Any] | None = None):
        self.cfg = cfg
        self.models = stage_models(cfg.model, cfg.stages) if cfg.stages else [cfg.model]
        state = (extra or {}).get("stages", {})
        self.events: list[dict] = list(state.get("events", []))
        self.history: list[list[float]] = [list(p) for p in state.get("history", [])]
        self.flops: float = float(state.get("flops", 0.0))
        if len(self.events) > len(cfg.stages):
            raise ValueError(
                f"the checkpoint records {len(self.events)} growths but the config has {len(cfg.stages)} stages"
            )

    @property
    def stage(self) -> int:
        """How many growths happened."""
        return len(self.events)

    @property
    def model(self) -> ModelConfig:
        """The current model."""
        return self.models[self.stage]

    def schedule(self, base):
        """The learning-rate schedule of the current stage: ``base`` re-warmed after the last jump."""
        if not self.events:
            return base
        last = self.events[-1]
        return rewarm_schedule(base, last["restart_step"], self.cfg.stages[self.stage - 1].rewarm_steps)

    @property
    def offset(self) -> int:
        """Schedule step minus optimizer step."""
        if not self.events:
            return 0
        last = self.events[-1]
        return grown_schedule_step(last["restart_step"]) - last["step"]

    @property
    def end_step(self) -> int:
        """The optimizer step at which the schedule ends."""
        return self.cfg.steps - self.offset

    def step_flops(self) -> float:
        """Training FLOPs of one step of the current model."""
        data = self.cfg.data
        return train_flops_per_token(self.model, data.seq_len) * data.batch_size * data.seq_len

    def record_eval(self, loss: float) -> None:
        """Adds a validation point (at the FLOPs spent so far) for the slope rule."""
        self.history.append([self.flops, float(loss)])

    def due(self, step: int) -> bool:
        """Whether the next stage grows after ``step`` updates."""
        if self.stage >= len(self.cfg.stages):
            return False
        stage = self.cfg.stages[self.stage]
        if stage.at_step is not None:
            return step >= stage.at_step
        threshold = THRESHOLDS[stage.operator] if stage.threshold is None else stage.threshold
        points = np.asarray(self.history, np.float64).reshape(-1, 2)
        points = points[points[:, 0] > 0]
        if len(points) < 3 or np.any(np.diff(points[:, 0]) <= 0):
            return False
        return slope_growth_index(points[:, 0], points[:, 1], threshold, online=True) is not None

    def grow(self, state, tx, mesh, rules, step: int):
        """Grows ``state`` into the next stage; returns the grown state and records the event."""

        stage = self.cfg.stages[self.stage]
        schedule_step = step + self.offset
        restart = stage.restart_step
        if restart is None:
            constant = CONSTANTS[stage.operator] if stage.constant is None else stage.constant
            restart = restart_step(schedule_step, stage.operator, constant)
        cfg = self.model
        ops = stage_ops(stage)
        for i, op in enumerate(ops):
            last = i == len(ops) - 1
            state, cfg = grow_train_state(
                state,
                cfg,
                op,
                tx=tx,
                mesh=mesh,
                rules=rules,
                restart_step=grown_schedule_step(restart) if last else None,
            )
        if cfg != self.models[self.stage + 1]:
            raise AssertionError(
                f"stage {self.stage} grew into {cfg}, expected {self.models[self.stage + 1]}"
            )
        self.events.append(
            {"step": step, "schedule_step": schedule_step, "restart_step": restart, "flops": self.flops}
        )
        self.history = []
        return state

    def extra(self) -> dict[str, Any]:
        """The JSON that travels with a checkpoint."""
        return {"stages": {"events": self.events, "history": self.history, "flops": self.flops}}
