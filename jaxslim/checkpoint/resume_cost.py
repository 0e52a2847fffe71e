"""What resuming from a lossy checkpoint costs: a per-step summary from the codec metadata, and the
loss changes measured by ``benchmarks/checkpoint_compression.py`` at the same settings.

A lossy restore changes three things: the weights (each coded tensor's relative RMS error is in its
metadata), Adam's first moment (restarts at zero where joint shrinking dropped it; with
``momentum_gain`` the kept entries carry the energy of all of it) and the second
moment (coded where kept; elsewhere filled per :attr:`CodecConfig.moment_fill`, with the RMS of
``log2(v_restored / v)`` over the filled entries in the metadata: an Adam update there is off by a
factor of about ``2 ** (rms / 2)``, since it scales with ``1 / sqrt(v)``).

Example:
    >>> summary = resume_cost({"mode": "excp", "bits": {"weights": 2, "moments": 2}, "leaves": [
    ...     {"kind": "weight", "stats": {"rel_rms_error": 0.01, "kept": 0.5, "moments_kept": 0.08,
    ...      "v_fill_log2_rms": 1.2}}], "moment_fill": "factored"})
    >>> summary["weight_rel_rms_error"], summary["moments_kept"]
    (0.01, 0.08)
"""

from __future__ import annotations

from typing import Any

# Final validation loss vs the uncompressed run after resuming from the latest lossy checkpoint
# every 2 saves, weights and moments at the same bits (benchmarks/README.md,
# "checkpoint_compression.py"): the demo GPT and a MiniLM fine-tuning, 200 steps, a save every 20
# steps, four resumes, an 8-bit keyframe every 10 saves (and for the defaults, the demo GPT over 2000
# steps with a save every 100, nine resumes). Each entry: the codec settings it was
# measured at, and {run: change}. A step's figures are those of the entry whose settings all equal
# its metadata's (:func:`settings`). The zero fill has not been measured with the current codebooks.
MEASURED: tuple[tuple[dict[str, Any], dict[str, float]], ...] = (
    (
        {"weights": 2, "moment_fill": "factored", "alpha": 1e-4, "gains": True, "outlier_fraction": 1e-4},
        {"gpt 200 steps": 0.0121, "minilm 200 steps": 0.0038},
    ),
    (
        {"weights": 2, "moment_fill": "factored", "alpha": 5e-5, "gains": True, "outlier_fraction": 1e-4},
        {"gpt 200 steps": 0.0024, "minilm 200 steps": 0.0033, "gpt 2000 steps (a save every 100)": 0.0083},
    ),
    (
        {"weights": 4, "moment_fill": "factored", "alpha": 5e-5, "gains": True, "outlier_fraction": 1e-4},
        {"gpt 200 steps": 0.0019, "minilm 200 steps": 0.0013},
    ),
    (
        {"weights": 2, "moment_fill": "factored", "alpha": 5e-5, "gains": False, "outlier_fraction": 0.0},
        {"gpt 200 steps": 0.0035, "minilm 200 steps": 0.0252},
    ),
    (
        {"weights": 4, "moment_fill": "factored", "alpha": 5e-5, "gains": False, "outlier_fraction": 0.0},
        {"gpt 200 steps": 0.0020, "minilm 200 steps": 0.0054},
    ),
)


def settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The codec settings of a step's metadata that :data:`MEASURED` is keyed by. Checkpoints
    written before a setting existed read as it being off (no gains, no outliers).

    Example:
        >>> settings({"bits": {"weights": 2}, "moment_fill": "factored", "alpha": 1e-4,
        ...           "residual_gain": True, "momentum_gain": True, "outlier_fraction": 1e-4})
        {'weights': 2, 'moment_fill': 'factored', 'alpha': 0.0001, 'gains': True, 'outlier_fraction': 0.0001}
    """
    return {
        "weights": meta.get("bits", {}).get("weights"),
        "moment_fill": meta.get("moment_fill", "zero"),
        "alpha": meta.get("alpha"),
        "gains": bool(meta.get("residual_gain")) and bool(meta.get("momentum_gain")),
        "outlier_fraction": meta.get("outlier_fraction", 0.0),
    }


def measured(meta: dict[str, Any]) -> dict[str, float] | None:
    """The benchmark's loss changes at exactly the settings of ``meta``, or ``None``."""
    if meta.get("mode") != "excp":
        return None
    mine = settings(meta)
    return next((runs for at, runs in MEASURED if at == mine), None)


def resume_cost(meta: dict[str, Any]) -> dict[str, Any]:
    """Summary of what restoring the step of ``meta`` (its codec metadata) changes.

    Returns:
        ``mode``, ``weight_rel_rms_error`` (mean over coded weights) and ``..._max``,
        ``moments_kept`` (mean fraction of entries whose Adam moments were kept),
        ``moment_fill`` and ``v_fill_log2_rms`` (mean over coded weights; ``None`` without a fill),
        and ``measured``: the benchmark's loss changes at the step's codec settings, if measured.
    """
    stats = [e.get("stats", {}) for e in meta.get("leaves", []) if e.get("kind") == "weight"]
    fill = meta.get("moment_fill", "zero")

    def mean(key: str) -> float | None:
        xs = [s[key] for s in stats if key in s]
        return sum(xs) / len(xs) if xs else None

    errs = [s["rel_rms_error"] for s in stats if "rel_rms_error" in s]
    return {
        "mode": meta.get("mode"),
        "weight_rel_rms_error": mean("rel_rms_error"),
        "weight_rel_rms_error_max": max(errs) if errs else None,
        "moments_kept": mean("moments_kept"),
        "moment_fill": fill,
        "v_fill_log2_rms": mean("v_fill_log2_rms") if fill != "zero" else None,
        "measured": measured(meta),
    }


def describe(meta: dict[str, Any]) -> list[str]:
    """:func:`resume_cost` as lines for ``jaxslim-ckpt inspect``."""
    c = resume_cost(meta)
    if c["mode"] != "excp":
        return ["expected resume error: none (lossless: a restore is bit-exact)"]
    lines = ["expected resume error (this step restored and trained on):"]
    if c["weight_rel_rms_error"] is not None:
        lines.append(
            f"  weights: relative RMS error {c['weight_rel_rms_error']:.1e} on average, "
            f"{c['weight_rel_rms_error_max']:.1e} at most (per coded tensor)"
        )
    if c["moments_kept"] is not None:
        kept = c["moments_kept"]
        if c["v_fill_log2_rms"] is not None:
            factor = 2 ** (c["v_fill_log2_rms"] / 2)
            v = (
                f"Adam's v filled ({c['moment_fill']}) on the other {1 - kept:.0%}: first updates there "
                f"off by a factor ~{factor:.2f} (log2 RMS {c['v_fill_log2_rms']:.2f} of v)"
            )
        else:
            v = f"v = 0 on the other {1 - kept:.0%}: the first updates there are sign-like"
        gain = " (its kept levels scaled to all of m's energy)" if meta.get("momentum_gain") else ""
        lines.append(f"  moments: {kept:.1%} kept, m restarts at 0 elsewhere{gain}; {v}")
    if c["measured"]:
        runs = ", ".join(f"{model} {change:+.2%}" for model, change in c["measured"].items())
        lines.append(f"  measured at these settings, final loss after resuming every 2 saves: {runs}")
    return lines
