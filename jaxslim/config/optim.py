"""Optimizer config: the optimizer, its learning-rate schedule, gradient noise and AGVM."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from jaxslim.config.validate import Config, at_least, between, nonempty, positive

# the decay shapes each schedule accepts ("" is the schedule's own)
DECAY_SHAPES = {"wsd": ("", "linear", "cosine", "sqrt"), "infinite": ("", "cosine", "linear", "inv_sqrt")}


@dataclass(frozen=True)
class OptimConfig(Config):
    """Optimizer, learning-rate schedule, gradient noise and AGVM.

    Attributes:
        name: ``"adamw"``, ``"lamb"`` (trust ratio per layer of a scanned stack and per expert),
            ``"lars"`` or ``"sgd"`` (``b1`` is the momentum of SGD and LARS).
        lr: peak learning rate.
        warmup_steps: linear warm-up length.
        decay: the schedule after the warm-up: ``"cosine"``, ``"linear"``, ``"constant"``,
            ``"wsd"`` (stable, then ``decay_shape`` over the last ``decay_fraction`` of the steps),
            ``"infinite"`` (``decay_shape`` cooldown over ``cooldown_steps`` to
            ``constant_lr_ratio * lr``, constant, and an exponential anneal over the last
            ``decay_fraction`` of the steps; 0 keeps it constant) or ``"repeated_cosine"`` (cycles of
            ``cycle_steps``, each re-warmed over ``warmup_steps``).
        final_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay: decoupled weight decay (matrices only; biases and norm scales are excluded).
        clip_norm: global gradient-norm clip; 0 disables it.
        lamb_preset: ``""`` (LAMB from the fields here) or a reference's recipe: ``"tf_addons"``,
            ``"apex"``, ``"nvlamb"``, ``"deepspeed"``, ``"optax"``: eps, trust mask, clamp, bias
            correction and apex's clip to 1.0 come from the preset; lr, betas, weight decay, a
            ``trust_min`` / ``trust_max`` set here and ``clip_norm`` (applied outside) from the fields.
        trust_mask: which params get the LAMB / LARS trust ratio: ``"decay"`` (those with weight
            decay, as TF-addons) or ``"all"``.
        trust_min / trust_max: clamp of the trust ratio; 0 means no bound.
        trust_coefficient: LARS's trust coefficient.
        bias_correction: LAMB's Adam bias correction.
        noise_eta / noise_gamma: gradient noise of variance ``eta / (1 + t)^gamma`` (0: none).
        agvm_every: AGVM measures the gradient variance every this many steps (0: off).
        agvm_start: the first step AGVM measures at.
        agvm_modules: regular expressions over parameter paths, one AGVM module each (a parameter
            belongs to the first that matches; the first is the reference module, the backbone).
    """

    name: Literal["adamw", "lamb", "lars", "sgd"] = "adamw"
    lr: float = positive(3e-4)
    warmup_steps: int = at_least(0, 100)
    decay: Literal["cosine", "linear", "constant", "wsd", "infinite", "repeated_cosine"] = "cosine"
    final_lr_ratio: float = between(0, 1, 0.1)
    b1: float = between(0, 1, 0.9)
    b2: float = between(0, 1, 0.95)
    eps: float = at_least(0, 1e-8)
    weight_decay: float = at_least(0, 0.1)
    clip_norm: float = at_least(0, 1.0)
    decay_shape: Literal["", "linear", "cosine", "sqrt", "inv_sqrt"] = ""
    decay_fraction: float = between(0, 1, 0.2)
    cooldown_steps: int = at_least(0, 0)
    constant_lr_ratio: float = between(0, 1, 0.5)
    cycle_steps: int = at_least(0, 0)
    lamb_preset: Literal["", "tf_addons", "apex", "nvlamb", "deepspeed", "optax"] = ""
    trust_mask: Literal["decay", "all"] = "decay"
    trust_min: float = at_least(0, 0.0)
    trust_max: float = at_least(0, 0.0)
    trust_coefficient: float = at_least(0, 0.001)
    bias_correction: bool = True
    noise_eta: float = at_least(0, 0.0)
    noise_gamma: float = at_least(0, 0.55)
    agvm_every: int = at_least(0, 0)
    agvm_start: int = at_least(0, 0)
    agvm_modules: tuple[str, ...] = nonempty(("embed", "attn", "mlp|moe", "."))

    def _check(self) -> None:
        o = "OptimConfig"
        shapes = DECAY_SHAPES.get(self.decay, ("",))
        if self.decay_shape not in shapes:
            raise ValueError(
                f"{o}.decay_shape must be one of {shapes} with decay={self.decay!r}, got {self.decay_shape!r}"
            )
        if self.trust_min and self.trust_max and self.trust_min > self.trust_max:
            raise ValueError(
                f"{o}.trust_min={self.trust_min!r} must not exceed {o}.trust_max={self.trust_max!r} "
                "(the trust-ratio clamp)"
            )
        if self.decay == "repeated_cosine" and self.cycle_steps <= self.warmup_steps:
            raise ValueError(
                f"{o}.cycle_steps={self.cycle_steps} must exceed warmup_steps={self.warmup_steps} "
                'with decay="repeated_cosine"'
            )
        for pattern in self.agvm_modules:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{o}.agvm_modules: {pattern!r} is not a regular expression ({e})") from e
