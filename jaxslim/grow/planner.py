"""When to grow, and to which step the schedule jumps: staged training's planner.

Staged training (Shen et al. 2022) grows a model when its loss-vs-compute curve flattens: the slope
of ``log10 loss`` against ``log10 compute`` (a running mean of 5 points, first differences) rises
above an operator's threshold after its steepest point. The grown model then continues from the
step at which the target model trained from scratch would have the same loss, which the paper
finds to be the small model's step divided by an operator constant. Thresholds and constants are
those of the reference's cheatsheet (fitted to GPT-2 on OpenWebText; the thresholds match the
Kaplan et al. (2020) simulation, the constants come from real curves).

Two ways to plan, same rules:

- :func:`kaplan_plan` simulates the small and the target model's learning curves from Kaplan et
  al.'s fits (loss vs parameters and steps at the critical batch size) and reads the growth step,
  the restart step and the target's compute-optimal stopping step off them. The fits describe
  GPT-2-tokenised WebText2 at scale: their steps are a guide, not a prescription, for small models
  on other corpora.
- :func:`slope_growth_index` applies the slope rule to a run's own (compute, validation loss)
  points; the trainer uses it online when a stage has no ``at_step`` (:mod:`jaxslim.grow.stages`).

Example:
    >>> plan = kaplan_plan(n_small=85e6 / 4, n_target=85e6, operator="width")
    >>> plan.restart_step < plan.grow_step
    True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxslim.config import ModelConfig

# slope thresholds of d log10(loss) / d log10(compute), from the reference's cheatsheet
THRESHOLDS = {"optimality": -0.052, "depth": -0.0575, "width": -0.0475, "depth_width": -0.03}
# small model's step at growth / target model's step at the same loss
CONSTANTS = {"width": 1.776, "depth": 1.412, "depth_width": 2.455}
OPERATORS = tuple(CONSTANTS)


def _check_operator(operator: str) -> None:
    if operator not in CONSTANTS:
        raise ValueError(f"growth operator must be one of {OPERATORS}, got {operator!r}")


def kaplan_loss(n_params, steps):
    """Kaplan et al. eq. 1.6: loss of ``n_params`` non-embedding parameters after ``steps``
    (at the critical batch size): ``(6.5e13 / N)**0.077 + (2.1e3 / S)**0.76``."""
    return (6.5e13 / np.asarray(n_params, np.float64)) ** 0.077 + (
        2.1e3 / np.asarray(steps, np.float64)
    ) ** 0.76


def critical_batch(loss):
    """Kaplan et al. eq. 5.3: the critical batch in tokens at ``loss``: ``2e8 / L**(1/0.21)``."""
    return 2e8 / np.asarray(loss, np.float64) ** (1 / 0.21)


def kaplan_curve(n_params: float, steps) -> tuple[np.ndarray, np.ndarray]:
    """``(compute, loss)`` along ``steps`` for a model of ``n_params``, with ``C = 6 N B_crit(L) S``."""
    steps = np.asarray(steps, np.float64)
    loss = kaplan_loss(n_params, steps)
    return 6 * n_params * critical_batch(loss) * steps, loss


def slope_growth_index(
    compute, loss, threshold: float, window: int = 5, *, online: bool = False
) -> int | None:
    """Index of the first point after the steepest one where the slope of the smoothed log-log
    curve rises above ``threshold`` (``None`` if it never does).

    The slope at point ``i`` is that of the segment from ``i`` to ``i + 1`` of ``log10 loss``
    (running mean over ``window`` points, edges reflected) against ``log10 compute``. ``online``
    ignores the newest ``window // 2`` slopes, whose smoothing window is cut by the edge: the
    reflection flattens them, which would fire the rule early on a curve still being drawn.
    """
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    if compute.shape != loss.shape or compute.ndim != 1:
        raise ValueError(f"compute and loss must be 1-D of one length, got {compute.shape} and {loss.shape}")
    if compute.size < 3:
        return None
    if np.any(compute <= 0) or np.any(loss <= 0) or np.any(np.diff(compute) <= 0):
        raise ValueError("compute must be positive and increasing and loss positive for a log-log slope")
    y = _running_mean(np.log10(loss), window)
    slope = np.diff(y) / np.diff(np.log10(compute))
    if online:
        slope = slope[: len(slope) - window // 2]
        if slope.size == 0:
            return None
    steepest = int(np.argmin(slope))
    later = np.nonzero(slope[steepest:] > threshold)[0]
    return None if later.size == 0 else steepest + int(later[0])


def _running_mean(x: np.ndarray, window: int) -> np.ndarray:
    # a centred uniform filter with reflected edges (scipy.ndimage.uniform_filter1d's default)
    if window <= 1:
        return x
    left = window // 2
    right = window - 1 - left
    padded = (
        np.concatenate([x[:left][::-1], x, x[len(x) - right :][::-1]])
        if right
        else np.concatenate([x[:left][::-1], x])
    )
    kernel = np.ones(window) / window
    return np.convolve(padded, kernel, mode="valid")[: len(x)]


def restart_step(grow_step: int, operator: str, constant: float | None = None) -> int:
    """The schedule step a grown model continues from: ``grow_step / constant`` (rounded)."""
    _check_operator(operator)
    c = CONSTANTS[operator] if constant is None else constant
    if not c >= 1:
        raise ValueError(f"the operator constant must be >= 1 (a larger model needs fewer steps), got {c!r}")
    return int(round(grow_step / c))


class Plan(NamedTuple):
    """A planned growth: grow the small model at ``grow_step`` (its loss ``loss_at_growth``),
    continue the grown model at schedule step ``restart_step``, stop at ``optimality_step`` (where
    the target's curve reaches the compute-optimal slope)."""

    grow_step: int
    restart_step: int
    loss_at_growth: float
    optimality_step: int | None


def kaplan_plan(n_small: float, n_target: float, operator: str, max_steps: int = 200_000) -> Plan:
    """Plans one growth from Kaplan et al.'s fits (see the module doc).

    Args:
        n_small / n_target: non-embedding parameters before and after growth
            (:func:`non_embedding_params`).
        operator: ``"width"``, ``"depth"`` or ``"depth_width"`` (its threshold and constant).
        max_steps: the longest curve simulated.

    Raises:
        ValueError: an unknown operator, sizes that do not grow, or a curve that never flattens
            to the threshold within ``max_steps``.
    """
    _check_operator(operator)
    if not 0 < n_small < n_target:
        raise ValueError(f"growth needs 0 < n_small < n_target, got {n_small} and {n_target}")
    steps = np.arange(100, max_steps + 1, 10)
    compute, loss = kaplan_curve(n_small, steps)
    i = slope_growth_index(compute, loss, THRESHOLDS[operator])
    if i is None:
        raise ValueError(
            f"the small model's simulated curve never flattens to slope {THRESHOLDS[operator]} within "
            f"{max_steps} steps; raise max_steps"
        )
    grow = int(steps[i])
    t_compute, t_loss = kaplan_curve(n_target, steps)
    j = slope_growth_index(t_compute, t_loss, THRESHOLDS["optimality"])
    return Plan(grow, restart_step(grow, operator), float(loss[i]), None if j is None else int(steps[j]))


def non_embedding_params(cfg: ModelConfig) -> int:
    """Weights of the attention and FFN matrices (Kaplan's ``N``; embeddings, norms, biases out)."""
    d, dh = cfg.d_model, cfg.head_dim_
    attn = (2 * cfg.n_heads + 2 * cfg.kv_heads) * d * dh
    ffn = (3 if cfg.gated_mlp else 2) * d * cfg.expert_ffn * (cfg.moe.num_experts if cfg.moe else 1)
    dense_ffn = (3 if cfg.gated_mlp else 2) * d * cfg.d_ff
    layers = [ffn if cfg.is_moe_layer(i) else dense_ffn for i in range(cfg.n_layers)] if cfg.moe else None
    return int(cfg.n_layers * attn + (sum(layers) if layers else cfg.n_layers * dense_ffn))


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward and backward, 3 x 2 FLOPs per multiply-accumulate):
    attention and FFN matrices, attention scores at ``seq_len``, and the output head. Experts count
    their ``top_k`` active copies."""
    d, dh = cfg.d_model, cfg.head_dim_
    attn = (2 * cfg.n_heads + 2 * cfg.kv_heads) * d * dh + 2 * cfg.n_heads * seq_len * dh
    dense_ffn = (3 if cfg.gated_mlp else 2) * d * cfg.d_ff
    moe_ffn = (3 if cfg.gated_mlp else 2) * d * cfg.expert_ffn * (cfg.moe.top_k if cfg.moe else 0)
    ffn = sum(moe_ffn if cfg.moe and cfg.is_moe_layer(i) else dense_ffn for i in range(cfg.n_layers))
    return 6.0 * (cfg.n_layers * attn + ffn + d * cfg.vocab_size)
