"""Training-run config: the parts, the run's length, evaluation, logging and staged growth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jaxslim.config.checkpoint import CheckpointConfig
from jaxslim.config.data import DataConfig
from jaxslim.config.mesh import MeshConfig
from jaxslim.config.model import ModelConfig
from jaxslim.config.optim import OptimConfig
from jaxslim.config.prune import PruneConfig
from jaxslim.config.validate import Config, at_least, bounded, nonempty, positive


@dataclass(frozen=True)
class StageConfig(Config):
    """One growth of a staged run (:mod:`jaxslim.grow`): the model before it is ``width`` times
    narrower and/or half as deep as the model after it.

    Attributes:
        width: width growth factor (1: none); it must divide every width and head count.
        depth: 2 doubles the stack (interleaved or appended new blocks), 1 leaves it.
        depth_mode: ``"identity"`` (new blocks add nothing: exactly loss-preserving, pre-norm
            models) or ``"copy"`` (stacking copies; not loss-preserving).
        placement: ``"interleave"`` (block i -> 2i, 2i + 1) or ``"append"``.
        at_step: grow after this many optimizer steps; ``None``: when the slope of the run's
            log validation loss against log training FLOPs rises above ``threshold`` (checked at
            every evaluation, so set ``eval_every``).
        restart_step: the schedule step the grown model continues from; ``None``: the step at
            growth divided by ``constant``.
        rewarm_steps: linear re-warm-up of the learning rate after the jump (0: none).
        threshold / constant: the slope rule's threshold and the step ratio; ``None``: the
            reference's values for the operator (width, depth or both).
    """

    width: int = positive(1)
    depth: Literal[1, 2] = 1  # depth growth doubles the stack
    depth_mode: Literal["identity", "copy"] = "identity"
    placement: Literal["interleave", "append"] = "interleave"
    at_step: int | None = positive(None)
    restart_step: int | None = at_least(0, None)
    rewarm_steps: int = at_least(0, 0)
    threshold: float | None = bounded(None, lt=0)  # a negative slope
    constant: float | None = at_least(1, None)

    @property
    def operator(self) -> str:
        """``"width"``, ``"depth"`` or ``"depth_width"`` (the planner's names)."""
        return {(True, False): "width", (False, True): "depth", (True, True): "depth_width"}[
            (self.width > 1, self.depth > 1)
        ]

    def _check(self) -> None:
        if self.width == 1 and self.depth == 1:
            raise ValueError("StageConfig: a stage must grow: set width >= 2 and/or depth=2")


def _default_model() -> ModelConfig:
    # a small GPT-2; the vocabulary follows the tokenizer when the run starts
    return ModelConfig.gpt2(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=256)


@dataclass(frozen=True)
class TrainConfig(Config):
    """A whole training run: model, mesh, data, optimizer, checkpoints, evaluation and logging.

    Presets live in ``configs/*.py`` (``get_config(arg) -> TrainConfig``); the command line overrides
    any field (``--optim.lr 3e-4 --data.batch-size 16``). The resolved config is written to
    ``<workdir>/config.json``.

    Attributes:
        model / mesh / data / optim / checkpoint / prune: the parts (``model.vocab_size`` is set to the
            tokenizer's vocabulary size when they differ). With ``stages``, ``model`` is the
            final model.
        workdir: run directory: checkpoints, metrics.jsonl, TensorBoard events, tokenizer, plots.
        steps: total optimizer steps (a resumed run continues up to this).
        seed: model initialisation and per-step PRNG seed.
        accum_steps: micro-batches per optimizer step (``data.batch_size`` must divide by it).
        log_every: steps between logged training metrics.
        eval_every: steps between evaluations on the validation split (0: only at the end).
        eval_batches: validation batches per evaluation (0: the whole split).
        sample_tokens: tokens of text generated from the final model (causal LM only; 0: none).
        sample_prompt: the text that generation continues.
        tensorboard: also write TensorBoard events (through tensorboardX).
        verbose: print every row of the parameter and sharding table at start-up (else the first 40).
        profile_start / profile_steps: a ``jax.profiler`` trace of ``profile_steps`` steps from
            ``profile_start`` into ``<workdir>/profile`` (0 steps: no trace).
        init_from: a model directory (jaxslim's ``save_jaxslim`` format or a Hugging Face checkpoint)
            whose weights start a fresh run (a resumed run ignores it). A dense model starts a
            mixture-of-experts ``model`` by upcycling (every expert a copy of the FFN, new routers);
            the optimizer state starts fresh.
        stages: staged training: the run starts from ``model`` shrunk by every stage and grows
            the whole training state at each stage (:class:`StageConfig`); ``steps`` is the
            length of the final model's schedule, which the run follows to its end.
    """

    model: ModelConfig = field(default_factory=_default_model)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    workdir: str = nonempty("runs/default")
    steps: int = positive(1000)
    seed: int = at_least(0, 0)
    accum_steps: int = positive(1)
    log_every: int = positive(10)
    eval_every: int = at_least(0, 0)
    eval_batches: int = at_least(0, 0)
    sample_tokens: int = at_least(0, 0)
    sample_prompt: str = "\n"
    tensorboard: bool = True
    verbose: bool = False
    profile_start: int = at_least(0, 0)
    profile_steps: int = at_least(0, 0)
    init_from: str | None = nonempty(None)
    stages: tuple[StageConfig, ...] = ()

    def _check(self) -> None:
        o, model, data = "TrainConfig", self.model, self.data
        if data.batch_size % self.accum_steps:
            raise ValueError(
                f"{o}.accum_steps={self.accum_steps} must divide data.batch_size={data.batch_size}"
            )
        if data.mlm != (model.arch == "bert"):
            want = "data.mlm=True" if model.arch == "bert" else "data.mlm=False"
            raise ValueError(
                f"{o}: model.arch={model.arch!r} trains with {want} "
                f"(encoders use masked LM, decoders causal LM), got data.mlm={data.mlm}"
            )
        if not model.rope and data.seq_len > model.max_len:
            raise ValueError(
                f"{o}: data.seq_len={data.seq_len} exceeds model.max_len={model.max_len} (the learned position table)"
            )
        moe = model.moe
        if moe is not None and self.mesh.expert != -1 and moe.num_experts % self.mesh.expert:
            raise ValueError(
                f"{o}: mesh.expert={self.mesh.expert} must divide model.moe.num_experts={moe.num_experts} "
                "(experts are sharded over the expert axis)"
            )
        if self.sample_tokens and data.mlm:
            raise ValueError(f"{o}.sample_tokens needs a causal LM; set it to 0 for masked-LM runs")
        if self.stages:
            self._check_stages()

    def _check_stages(self) -> None:
        # whether each stage fits the model is the growth operators' to say: jaxslim.grow.stages.start_model
        o = "TrainConfig"
        at = [s.at_step for s in self.stages]
        known = [a for a in at if a is not None]
        if known != sorted(set(known)) or any(a >= self.steps for a in known):
            raise ValueError(
                f"{o}.stages: at_step values must increase and stay below steps={self.steps}, got {at}"
            )
        if any(a is None for a in at) and not self.eval_every:
            raise ValueError(
                f"{o}.stages without at_step grow by the validation-loss slope: set eval_every > 0"
            )
        if self.init_from is not None:
            raise ValueError(
                f"{o}: init_from and stages do not combine (a staged run starts from its small model)"
            )
