"""Checkpoint config: when checkpoints are written, how many are kept, and how they are compressed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jaxslim.config.validate import Config, at_least, between, positive


@dataclass(frozen=True)
class CodecConfig(Config):
    """How checkpoints are compressed (:class:`jaxslim.checkpoint.Codec`).

    Attributes:
        mode: ``"excp"`` (lossy: residual, shrinking, k-means codes) or ``"lossless"`` (XOR
            residual and byte planes; bit-exact).
        weight_bits: bits of a weight-residual code (2..8): ``2**bits - 1`` centroids and zero.
        moment_bits: bits of an Adam-moment code (2..8).
        keyframe_bits: bits of a keyframe's weight codes (2..8); keyframes keep every weight.
        keyframe_every: a keyframe every this many saves (then ``keyframe_every - 1`` deltas), so a
            restore applies at most ``keyframe_every - 1`` residuals.
        alpha: ExCP's ``prune_alpha``, the numerator of the second-moment scaling of the threshold.
            Larger drops more residuals: 1e-4 coded the demo GPT's checkpoints 28x smaller than
            Orbax's instead of 24.2x (checkpoint format 2), but its final loss after resuming every
            2 saves rose from +0.26% to +1.21% (training from scratch, the dropped residuals are
            progress).
        beta: ExCP's ``prune_beta``: momentum is kept where ``|m| > beta * mean(|m|)``.
        max_scale: cap of the threshold's scale on the median of ``|dW|`` (2.5 in ExCP).
        min_size: floating-point leaves with fewer elements (biases, norms, scalars) are stored
            unchanged in the lossy mode.
        kmeans_iters: Lloyd iterations of the codebook fit.
        outlier_fraction: per coded weight (per layer of a stack), this fraction of the entries with
            the largest residual (a keyframe: the largest weights), at least one, is stored exactly
            (float32 value and coordinates) and left out of the codebook fit. A weight's few large
            entries (a transformer's outlier features) otherwise sit in the codebook's widest cells,
            and a 2-bit delta's levels are far too small to correct their error later; the residual
            gain needs it (their energy would inflate the gain of everything else). On a MiniLM
            fine-tuning it cut the weights' relative RMS error 4x (after two 2-bit deltas) and,
            with the gains, the final loss after resuming every 2 saves from +0.90% to +0.33%, for
            ~3% more bytes. 0 turns it off.
        residual_gain: scale each delta's weight levels (per tensor, per layer of a stack) by
            ``min(2, sum d**2 / sum q**2)`` over the residual ``d`` and its reconstruction ``q``. The
            k-means levels are cell means, which shrink the residual, and dropped residuals shrink it
            further, so without the gain a restore lags behind the run it resumes: a MiniLM
            fine-tuning resumed every 2 saves from 2-bit deltas lost about a fifth of each interval's
            movement and ended +1.24% above the uncompressed loss with only the weights lossy
            (+0.32% with the gain).
        momentum_gain: scale the kept first moment's levels (per tensor, per layer of a stack) by
            ``min(2, sum m**2 / sum q**2)`` over all of ``m`` and its reconstruction ``q``, so the
            momentum a restore keeps carries the energy of what joint shrinking dropped (restarting
            at zero there loses progress: the same fine-tuning ended +1.10% above the uncompressed
            loss with the residual gain alone, +0.33% with both).
        moment_fill: what a restore puts where joint shrinking dropped Adam's second moment ``v``
            (``m`` restarts at zero there in every mode): ``"factored"`` (default) a rank-1 estimate
            in the log domain, ``2**(row_i + col_j - mean)`` from the mean ``log2 v`` of the dropped
            entries of each row and each column (Adafactor's factorisation; ``rows + cols``
            16-bit integers per tensor); ``"scalar"`` the geometric mean of the dropped entries per
            tensor (per layer of a stack); ``"zero"`` nothing (ExCP: ``v = 0``, so the first updates
            after a resume are sign-like, ``(1 - b1) / sqrt(1 - b2)`` times the learning rate).

    The defaults (2-bit weight and moment codes, 8-bit keyframes every 10 saves, the factored fill,
    both gains) are the setting measured in benchmarks/README.md (checkpoint compression): over 200
    steps with a save every 20, a MiniLM fine-tuning resumed every 2 saves ended +0.33% above the
    uncompressed loss at 20.5x Orbax's size (+2.52% without the gains and outliers); the demo GPT
    +0.24% at 26.6x. A longer keyframe interval raises the ratio and lengthens the chain a restore
    reads.

    Example:
        >>> CodecConfig(mode="lossless").keyframe_every
        10
    """

    mode: Literal["excp", "lossless"] = "excp"
    weight_bits: int = between(2, 8, 2)
    moment_bits: int = between(2, 8, 2)
    keyframe_bits: int = between(2, 8, 8)
    keyframe_every: int = positive(10)
    alpha: float = at_least(0, 5e-5)
    beta: float = at_least(0, 2.0)
    max_scale: float = at_least(0, 2.5)
    min_size: int = positive(4096)
    kmeans_iters: int = positive(10)
    outlier_fraction: float = between(0, 0.01, 1e-4)
    residual_gain: bool = True
    momentum_gain: bool = True
    moment_fill: Literal["factored", "scalar", "zero"] = "factored"


@dataclass(frozen=True)
class CheckpointConfig(Config):
    """When and how checkpoints are written.

    Attributes:
        every: save every this many steps (and at the end); 0 disables checkpointing.
        keep: keep the last this many checkpoints.
        keep_every: also keep every checkpoint whose step is a multiple of this (0: none).
        async_save: write in the background while training continues.
        codec: ``None`` (plain Orbax) or a :class:`CodecConfig`: ExCP (residual against the previous
            reconstructed checkpoint, weight-momentum shrinking, k-means codes; lossy) or lossless
            (XOR residual in byte planes; bit-exact). Training resumes from either. On the command
            line, ``--checkpoint.compression {none,excp,lossless}`` chooses it.
    """

    every: int = at_least(0, 100)
    keep: int = positive(3)
    keep_every: int = at_least(0, 0)
    async_save: bool = True
    codec: CodecConfig | None = None
