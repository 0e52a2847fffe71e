"""Prune -> distill (SlimSAM-style alternate slimming) for compression beyond post-training pruning.

Post-training pruning (:func:`~jaxslim.prune.prune_post_training`) only removes heads and FFN
neurons and holds up to about half the FLOPs. Going further also means narrowing the residual
stream (the embedding dimension every layer reads and writes), and that changes the function too
much to be repaired by mask tuning alone. SlimSAM alternates the two kinds of structure, each
followed by distillation from the dense teacher:

1. **embedding step**: score every residual channel with the *disturbed Taylor* importance
   ``Σ |w · ∂L/∂w|`` over every weight that reads or writes the channel, where ``L`` is the distance
   of the model's hidden states to its own hidden states plus small Gaussian noise (without the
   noise the gradient is exactly zero at the dense point); keep the best channels
   (:func:`slim_channels`) and distil, the student's hidden states regressing the teacher's at the
   kept channels (and the teacher's logits, when the model has a head);
2. **inner step**: prune heads and neurons of the distilled student to a FLOPs budget with the
   label-free Kwon et al. pipeline, slim physically, and distil again.

Distillation reuses the training machinery (:func:`~jaxslim.engine.state.create_train_state`,
:func:`~jaxslim.engine.step.make_train_step` with a distillation objective, the optimizer factory).
Removing residual channels changes the LayerNorm statistics, so unlike head and neuron slimming a
channel cut is **not** function-preserving; the distillation phases are what recover the quality.

Example:
    >>> from jaxslim.prune import prune_distill  # doctest: +SKIP
    >>> r = prune_distill(model, batches, channel_keep=0.75, inner_budget=0.5, steps=300)  # doctest: +SKIP
    >>> r.model.cfg.d_model, r.flops  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from flax import nnx

from jaxslim.config import MeshConfig, ModelConfig, OptimConfig
from jaxslim.engine import create_train_state, fit, make_train_step, merge_model
from jaxslim.models import Transformer
from jaxslim.optim import build_optimizer
from jaxslim.prune.fisher import distill_loss
from jaxslim.prune.flops import cost_model
from jaxslim.prune.posttrain import prune_post_training
from jaxslim.prune.samples import mean_length
from jaxslim.prune.search import check_budget
from jaxslim.prune.slim import slim
from jaxslim.sharding import make_mesh

# residual-stream axes: every weight slice along them belongs to one channel
_CHANNEL_AXES = ("embed", "norm")


def _flat(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _axes(v: nnx.Variable) -> tuple:
    return tuple(v.get_metadata().get("out_sharding") or (None,) * v.get_value().ndim)


def channel_scores(
    model: Transformer, batches: Sequence[dict], *, noise_std: float = 0.01, seed: int = 0
) -> np.ndarray:
    """Disturbed-Taylor importance ``[d_model]`` of each residual channel (summed over batches).

    For every parameter with a residual axis (``embed``, or ``norm`` of size ``d_model``), the
    per-weight first-order saliency ``|w · g|`` is summed over all other axes, where ``g`` is the
    gradient of the distance between the model's last hidden states and their disturbed copy.
    """
    d = model.cfg.d_model
    # flax annotates split's states after the first as a variadic tuple, which mypy cannot unpack
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    noise = float(noise_std)

    @jax.jit
    def batch_scores(params, rest, batch):
        def loss(p):
            out = nnx.merge(graphdef, p, rest)(batch["tokens"], attention_mask=batch.get("attention_mask"))
            h = out.hidden
            key = jax.random.fold_in(jax.random.key(seed), batch["index"][0])
            target = jax.lax.stop_gradient(h + noise * jax.random.normal(key, h.shape, h.dtype))
            w = batch["attention_mask"].astype(h.dtype)
            return jnp.sum(jnp.sum(jnp.square(h - target), -1) * w) / jnp.maximum(jnp.sum(w), 1.0)

        grads = jax.grad(loss)(params)
        total = jnp.zeros((d,), jnp.float32)
        for (_, p), (_, g) in zip(nnx.to_flat_state(params), nnx.to_flat_state(grads), strict=True):
            w, gv, axes = p.get_value(), g.get_value(), _axes(p)
            sal = jnp.abs(w * gv).astype(jnp.float32)
            for i, a in enumerate(axes):
                if a in _CHANNEL_AXES and w.shape[i] == d:
                    total = total + jnp.sum(sal, axis=tuple(j for j in range(w.ndim) if j != i))
        return total

    scores = np.zeros((d,), np.float64)
    for batch in batches:
        scores += np.asarray(batch_scores(params, rest, dict(batch)), np.float64)
    return scores


def slim_channels(model: Transformer, keep: npt.ArrayLike) -> Transformer:
    """The model restricted to the residual channels ``keep`` (indices into ``d_model``).

    Every weight that reads or writes the residual stream (embeddings, norms, attention and FFN
    input and output projections, the LM/MLM head and the pooler input) is sliced to those
    channels; ``head_dim`` stays what it was. Works on scanned, unscanned and already-slimmed
    models. Not function-preserving (LayerNorm/RMSNorm statistics run over fewer channels):
    distil afterwards.

    Raises:
        ValueError: ``keep`` is empty, has duplicates, or indexes outside ``[0, d_model)``.
    """
    cfg = model.cfg
    keep = np.asarray(keep, np.int64).reshape(-1)
    if keep.size == 0 or keep.size > cfg.d_model or len(np.unique(keep)) != keep.size:
        raise ValueError(
            f"keep must list 1..{cfg.d_model} distinct channels, got {keep.size} ({keep[:8]}...)"
        )
    if keep.min() < 0 or keep.max() >= cfg.d_model:
        raise ValueError(f"keep indexes channels outside [0, {cfg.d_model}): {keep.min()}..{keep.max()}")
    keep = np.sort(keep)
    new_cfg = cfg.replace(d_model=int(keep.size), head_dim=cfg.head_dim_)
    target = nnx.eval_shape(lambda: Transformer(new_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(target)
    old = dict(nnx.to_flat_state(nnx.state(model)))
    new = dict(nnx.to_flat_state(state))
    if set(old) != set(new):
        raise ValueError(f"cannot slice channels: parameter sets differ ({sorted(set(old) ^ set(new))[:4]})")
    for path, var in new.items():
        x = np.asarray(old[path].get_value())
        want = var.get_value().shape
        for i, (a, b) in enumerate(zip(x.shape, want, strict=True)):
            if a != b:
                if a != cfg.d_model or b != keep.size:
                    raise ValueError(f"{'.'.join(map(str, path))}: axis {i} is {a}, expected {b}")
                x = np.take(x, keep, axis=i)
        var.set_value(jnp.asarray(x))
    return nnx.merge(graphdef, state)


def _distill_objective(model, batch, rng):
    """Student vs teacher targets carried in the batch: hidden-state MSE over real tokens at the
    kept channels, plus KL(teacher || student) of the logits when both have them."""
    out = model(batch["tokens"], attention_mask=batch["attention_mask"])
    w = batch["attention_mask"].astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(w), 1.0)
    err = jnp.sum(jnp.square(out.hidden.astype(jnp.float32) - batch["target_hidden"]), -1)
    hidden = jnp.sum(err * w) / denom
    loss, metrics = hidden, {"hidden_mse": hidden}
    if "target_logits" in batch and out.logits is not None:
        t = jax.nn.log_softmax(batch["target_logits"])
        s = jax.nn.log_softmax(out.logits)
        kl = jnp.sum(jnp.sum(jnp.exp(t) * (t - s), -1) * w) / denom
        loss = loss + kl
        metrics["kl"] = kl
    return loss, metrics, out


def distill(
    student: Transformer,
    teacher: Transformer,
    batches: Sequence[dict],
    *,
    channels: npt.ArrayLike | None = None,
    steps: int = 200,
    lr: float = 1e-4,
    warmup_steps: int = 20,
    logits: bool = True,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Transformer, list[float]]:
    """Trains ``student`` to reproduce ``teacher`` on ``batches`` (cycled) for ``steps`` AdamW steps.

    Args:
        student, teacher: jaxslim models; the student's ``d_model`` equals ``len(channels)``.
        batches: token batches with ``attention_mask`` (e.g. from
            :func:`~jaxslim.prune.samples.bucket_batches`); batches whose size the device count does
            not divide are skipped.
        channels: the teacher's residual channels the student kept (default: all).
        steps, lr, warmup_steps: the AdamW schedule (cosine decay to 10%, no weight decay).
        logits: also match the teacher's logits when both models have a head.
        progress: called with (step, loss) after every step.

    Returns:
        The distilled student and the per-step losses.
    """
    channels = np.arange(teacher.cfg.d_model) if channels is None else np.sort(np.asarray(channels))
    if student.cfg.d_model != len(channels):
        raise ValueError(
            f"student d_model={student.cfg.d_model} but {len(channels)} teacher channels are kept"
        )
    mesh_cfg = MeshConfig(data=-1)
    mesh, rules = make_mesh(mesh_cfg), mesh_cfg.rules
    n_data = mesh.shape["data"]
    usable = [b for b in batches if len(b["tokens"]) % n_data == 0]
    if not usable:
        raise ValueError(f"distill needs batches whose size divides by the {n_data} data-parallel devices")
    opt = OptimConfig(lr=lr, warmup_steps=min(warmup_steps, steps), weight_decay=0.0, clip_norm=1.0)
    tx = build_optimizer(opt, steps)
    t_graph, t_state = nnx.split(teacher)
    with_logits = logits and student.cfg.head != "none" and teacher.cfg.head != "none"

    @jax.jit
    def targets(t_state, batch):
        out = nnx.merge(t_graph, t_state)(batch["tokens"], attention_mask=batch["attention_mask"])
        found = {"target_hidden": out.hidden.astype(jnp.float32)[..., channels]}
        if with_logits:
            found["target_logits"] = out.logits
        return found

    def with_targets(b):
        batch = {"tokens": b["tokens"], "attention_mask": b["attention_mask"]}
        return batch | jax.device_get(targets(t_state, batch))

    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        cfg = student.cfg
        state, setup = create_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), tx, mesh, rules)
        _, params, rest = nnx.split(student, nnx.Param, ...)  # type: ignore[misc]  # as above
        state = state._replace(
            params=jax.device_put(params, setup.shardings.params),
            rest=jax.device_put(rest, setup.shardings.rest),
        )
        step_fn = make_train_step(setup, _distill_objective)
        try:
            state, losses = fit(
                step_fn,
                state,
                usable,
                steps=steps,
                mesh=mesh,
                rules=rules,
                prepare=with_targets,
                progress=progress,
            )
        except FloatingPointError as e:
            raise FloatingPointError(f"distillation: {e}; lower lr (got {lr})") from None
        out = merge_model(setup, state)
    return out, losses


@dataclasses.dataclass
class PruneDistillResult:
    """Outcome of :func:`prune_distill`.

    Attributes:
        model: the slim, distilled student.
        channels: the teacher's residual channels it kept (its embeddings are these coordinates).
        head_mask, neuron_mask: the inner step's masks on the channel-pruned student.
        flops: the student's MACs over the teacher's (per-layer attention + FFN, at the samples'
            mean length).
        losses: distillation losses of the embedding and the inner phase.
        seconds: wall time per phase.
    """

    model: Transformer
    channels: np.ndarray
    head_mask: np.ndarray
    neuron_mask: np.ndarray
    flops: float
    losses: dict[str, list[float]]
    seconds: dict[str, float]


def model_macs(cfg: ModelConfig, seq_len: float) -> float:
    """MACs of all attention and FFN blocks at ``seq_len`` (Kwon et al.'s cost model, see
    :mod:`jaxslim.prune.flops`) for any widths: per-layer heads and FFN widths, narrowed residual."""
    cm = cost_model(cfg.replace(layer_heads=None, layer_ffn=None), seq_len)
    heads = cfg.layer_heads or (cfg.n_heads,) * cfg.n_layers
    ffn = cfg.layer_ffn or (cfg.d_ff,) * cfg.n_layers
    return float(
        sum(h // cm.group_size * cm.group_macs + f * cm.neuron_macs for h, f in zip(heads, ffn, strict=True))
    )


def prune_distill(
    model: Transformer,
    batches: Sequence[dict],
    *,
    channel_keep: float = 0.75,
    inner_budget: float = 0.5,
    steps: int = 200,
    lr: float = 1e-4,
    noise_std: float = 0.01,
    progress: Callable[[str], None] | None = None,
) -> PruneDistillResult:
    """SlimSAM-style alternate slimming: residual channels, distil, heads and neurons, distil.

    Args:
        model: the dense teacher (a uniform-width jaxslim model).
        batches: sample batches (see :mod:`jaxslim.prune.samples`), used for importance, pruning
            and distillation.
        channel_keep: fraction of residual channels kept, in (0, 1].
        inner_budget: kept fraction of the channel-pruned student's head and neuron FLOPs, in (0, 1].
        steps: distillation steps after each of the two pruning steps.
        lr: distillation learning rate.
        noise_std: the disturbed teacher's noise (channel importance and Fisher).
    """
    channel_keep = check_budget(channel_keep, "channel_keep")
    inner_budget = check_budget(inner_budget, "inner_budget")
    if not model.cfg.uniform:
        raise ValueError("prune_distill needs the dense (uniform-width) model as the teacher")
    say = progress or (lambda _: None)
    batches = list(batches)
    seconds: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    d = model.cfg.d_model
    n_keep = max(1, int(round(channel_keep * d)))

    t0 = time.perf_counter()
    say("channel importance")
    scores = channel_scores(model, batches, noise_std=noise_std)
    channels = np.sort(np.argsort(-scores, kind="stable")[:n_keep])
    student = slim_channels(model, channels)
    seconds["channels"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("distil (embedding step)")
    student, losses["embedding"] = distill(student, model, batches, channels=channels, steps=steps, lr=lr)
    seconds["distill_embedding"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("prune heads and neurons")
    if inner_budget < 1.0:
        r = prune_post_training(student, batches, distill_loss(noise_std), budget=inner_budget)
        head_mask, neuron_mask = r.head_mask, r.neuron_mask
        student = slim(student, head_mask, neuron_mask)
    else:
        head_mask = np.ones((student.cfg.n_layers, student.cfg.n_heads), np.float32)
        neuron_mask = np.ones((student.cfg.n_layers, student.cfg.d_ff), np.float32)
    seconds["inner"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("distil (inner step)")
    student, losses["inner"] = distill(student, model, batches, channels=channels, steps=steps, lr=lr)
    seconds["distill_inner"] = time.perf_counter() - t0

    seq = mean_length(batches)
    flops = model_macs(student.cfg, seq) / model_macs(model.cfg, seq)
    return PruneDistillResult(student, channels, head_mask, neuron_mask, flops, losses, seconds)
