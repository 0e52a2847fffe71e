"""Staged training's part in a run: the current stage's model and re-warmed schedule, the run's end
step, FLOPs accounting, the validation points of the slope rule, and the growth itself.

A run without stages is a one-stage run: the method then only counts FLOPs (logged as ``flops``).
Before a growth the state is checkpointed (and the save waited for) in the run's checkpoint
directory; right after it, the grown state is saved in ``<workdir>/stages/grown-<n>/``.
"""

from __future__ import annotations

from typing import Any

from jaxslim.checkpoint import Checkpointer
from jaxslim.engine import count_params
from jaxslim.grow.stages import Staging
from jaxslim.method import Hook, Method


class GrowthMethod(Method):
    """The stages of a :class:`~jaxslim.config.TrainConfig` (its ``stages``, ``model``, ``steps``)."""

    name = "growth"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.staging = Staging(cfg)
        self.built_stage: int | None = None
        self.hooks = (
            Hook(self._maybe_grow, at="before_step"),
            Hook(self._count_flops, at="after_step"),
            Hook(lambda run: {"flops": self.staging.flops}, at="log"),
            Hook(lambda run: self.staging.record_eval(run.eval_metrics["eval_loss"]), at="eval"),
        )

    def restore(self, extra):
        staging = Staging(self.cfg, extra)
        if self.built_stage is not None and staging.stage != self.built_stage:
            raise ValueError(
                f"the checkpoint restored is in stage {staging.stage} but the newest checkpoint, which "
                f"the model was built for, is in stage {self.built_stage}"
            )
        self.staging = staging

    def extra(self):
        return self.staging.extra()

    def model_config(self, cfg):
        self.built_stage = self.staging.stage
        return self.staging.model

    def schedule(self, schedule):
        return self.staging.schedule(schedule)

    def end_step(self, steps):
        return self.staging.end_step

    def _count_flops(self, run) -> None:
        self.staging.flops += self.staging.step_flops()

    def _maybe_grow(self, run):
        staging, step = self.staging, run.step
        if not staging.due(step):
            return None
        ckpt = run.checkpointer
        if ckpt is not None:
            if ckpt.latest_step() != step:
                ckpt.save(step, run.state, extra=run.checkpoint_extra(), force=True)
            ckpt.wait()
        before = count_params(run.state)
        state = staging.grow(run.state, run.tx, run.mesh, run.rules, step)
        self.built_stage = staging.stage
        event = staging.events[-1]
        after = count_params(state)
        run.writer.write_scalars(
            step,
            {"growth": staging.stage, "growth/restart_step": event["restart_step"], "growth/params": after},
        )
        run.writer.flush()
        run.say(
            f"grew the model at step {step} (stage {staging.stage}: {before / 1e6:.2f}M -> "
            f"{after / 1e6:.2f}M parameters); the schedule continues from step "
            f"{event['restart_step']} and the run ends after step {staging.end_step}"
        )
        extra = run.checkpoint_extra()  # holds this method's extra, with the growth just recorded
        with Checkpointer(
            run.workdir / "stages" / f"grown-{staging.stage}",
            max_to_keep=1,
            async_save=False,
            config_json=run.config_json,
        ) as grown:
            if step not in grown.all_steps():
                grown.save(step, state, extra=extra, force=True)
        return state
