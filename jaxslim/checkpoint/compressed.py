"""Compressed checkpoints through Orbax: keyframes and residual chains that training resumes from.

:class:`CompressedCheckpointer` has the interface of :class:`~jaxslim.checkpoint.Checkpointer`
(``save``, ``restore``, ``latest_step``, ``wait``, ``close``) and stores each step as

- ``state``: the codec's records (packed codes, codebooks, thresholds, byte planes, unchanged
  leaves), a pytree of arrays written with Orbax's ``StandardSave`` (async, OCDBT, zstd, sharded);
- ``codec``: JSON metadata: format and version, mode, the reference step, the keyframe step, bits,
  alpha / beta, each leaf's path, shape, dtype and storage kind, per-tensor statistics, a
  checksum of every stored array, and the tree in Orbax's serialised form with numbered leaves;
- ``extra`` and ``config`` as for a plain checkpoint.

A keyframe is encoded without a reference; the next ``keyframe_every - 1`` saves are residuals
against the previous *reconstructed* state, which the checkpointer keeps on device (one extra copy
of the weights; of the whole floating-point state in the lossless mode). A restore walks keyframe ->
deltas, so any step needs at most ``keyframe_every - 1`` residuals, and retention never deletes a
step that a kept step depends on.

Errors: a step whose reference is gone raises :class:`MissingReferenceError`; files that fail
Orbax's read or the checksums raise :class:`~jaxslim.checkpoint.CorruptCheckpointError` naming the
step and tensor; a state of other shapes raises
:class:`~jaxslim.checkpoint.IncompatibleCheckpointError` listing each difference. Nothing on disk
is changed by a failed restore.

Example:
    >>> import jax.numpy as jnp, tempfile
    >>> from jaxslim.checkpoint import CodecConfig, CompressedCheckpointer, abstract_like
    >>> state = {"params": {"w": jnp.ones((64, 128))}}
    >>> with CompressedCheckpointer(tempfile.mkdtemp(), CodecConfig(mode="lossless"), async_save=False) as ckpt:
    ...     _ = ckpt.save(1, state)
    ...     restored, _ = ckpt.restore(abstract_like(state))
    >>> bool((restored["params"]["w"] == 1).all())
    True
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxslim.checkpoint.codec import (
    FORMAT,
    FORMAT_VERSION,
    MOMENT,
    RAW,
    READABLE_VERSIONS,
    WEIGHT,
    XOR,
    Codec,
    LeafPlan,
    packed_sharding,
    planes_sharding,
    replicated,
)
from jaxslim.checkpoint.manager import (
    Checkpointer,
    CheckpointSaveError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    NoCheckpointError,
    NonFiniteStateError,
    _listing,
    _nonfinite_paths,
    _parse_json,
    restore_with_fallback,
)
from jaxslim.config import CheckpointConfig, CodecConfig

log = logging.getLogger(__name__)


class MissingReferenceError(CorruptCheckpointError):
    """A compressed step's reference (its keyframe or an earlier delta) is not in the directory."""


def _key(i: int) -> str:
    return f"{i:05d}"


class CompressedCheckpointer:
    """Compressed, async, retained, resumable checkpoints (see the module docstring).

    Args:
        directory: the checkpoint directory.
        codec: the :class:`~jaxslim.checkpoint.codec.CodecConfig` for new saves (a restore reads
            each step's own settings from its metadata).
        max_to_keep, keep_every, async_save, save_every, config_json, read_only: as for
            :class:`~jaxslim.checkpoint.Checkpointer`; retention additionally keeps every step a
            kept step depends on.
        stacked: for states without nnx metadata, ``(path, shape) -> bool``: whether a weight's
            axis 0 stacks layers (per-layer statistics); see :meth:`Codec.plan`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        codec: CodecConfig,
        *,
        max_to_keep: int | None = 3,
        keep_every: int | None = None,
        async_save: bool = True,
        save_every: int = 1,
        config_json: str | Mapping[str, Any] | None = None,
        read_only: bool = False,
        stacked: Any = None,
    ) -> None:
        self.codec = Codec(codec)
        self._stacked = stacked
        self._read_only = read_only
        self._refs: dict[int, int | None] = {}
        self._async = async_save
        # the background save in flight: its thread, its step, and its failure once it has ended
        self._job: threading.Thread | None = None
        self._pending: int | None = None
        self._job_failure: tuple[int, BaseException] | None = None
        self._inner = Checkpointer(
            directory,
            max_to_keep=max_to_keep,
            keep_every=keep_every,
            async_save=async_save,
            save_every=save_every,
            config_json=config_json,
            read_only=read_only,
            depends_on=self.depends_on,
        )
        self._meta: dict[int, dict] = {}
        for step in self._inner.all_steps():
            try:
                meta = self.metadata(step)
            except CorruptCheckpointError as e:  # kept (never deleted); restore reports it
                log.warning("%s", e)
                continue
            if meta is not None:
                self._refs[step] = meta.get("reference_step")
        # the reconstruction of the last saved / restored step: the next delta's reference
        self._ref: dict | None = None
        self._ref_plan: tuple[LeafPlan, ...] | None = None
        self._ref_step: int | None = None
        self._deltas = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> CompressedCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def directory(self):
        """The checkpoint directory."""
        return self._inner.directory

    def wait(self) -> None:
        """Blocks until pending saves (encode, host copy, files) have committed.

        Raises:
            CheckpointSaveError: a save failed, now or earlier (sticky).
        """
        self._join()
        self._inner.wait()

    def check(self) -> None:
        """Raises ``CheckpointSaveError`` if a background save has failed; never blocks."""
        self._join(block=False)
        self._inner.check()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's threads (raises if the last save failed)."""
        try:
            self._join()
        except CheckpointSaveError:
            pass  # recorded in the inner checkpointer, whose close raises it after releasing threads
        self._inner.close()

    def _join(self, *, block: bool = True) -> None:
        """Waits for the background encode of the last save (unless ``block`` is false and it is
        still running) and turns its failure into the sticky ``CheckpointSaveError``."""
        job = self._job
        if job is None or (not block and job.is_alive()):
            return
        job.join()
        self._job, self._pending = None, None
        failure, self._job_failure = self._job_failure, None
        if failure is not None:
            step, cause = failure
            if isinstance(cause, CheckpointSaveError):
                raise cause
            raise self._inner.record_failure(step, cause) from cause

    def all_steps(self) -> list[int]:
        """Committed (or in-flight) steps, ascending."""
        steps = self._inner.all_steps()
        pending = self._pending
        return steps if pending is None or pending in steps else sorted([*steps, pending])

    def latest_step(self) -> int | None:
        """The newest step (committed or in flight), or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` would write at ``step``."""
        pending = self._pending
        return (pending is None or step > pending) and self._inner.should_save(step)

    def config(self, step: int | None = None) -> dict[str, Any] | None:
        """The run config saved with ``step``."""
        self._join_for(step)
        return self._inner.config(step)

    def extra(self, step: int | None = None) -> dict[str, Any]:
        """The ``extra`` dict saved with ``step`` (latest by default), without restoring the state."""
        self._join_for(step)
        return self._inner.extra(step)

    def _join_for(self, step: int | None) -> None:
        if self._pending is not None and (step is None or step == self._pending):
            self._join()

    def depends_on(self, step: int) -> list[int]:
        """The steps that ``step`` needs to be restored (its reference), for retention."""
        ref = self._refs.get(step)
        return [] if ref is None else [ref]

    def metadata(self, step: int) -> dict[str, Any] | None:
        """The codec metadata of ``step`` (``None`` for an uncompressed checkpoint)."""
        self._join_for(step)
        if step not in self._meta:
            meta = self._inner.codec(step)
            if meta is None:
                return None
            if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
                raise CorruptCheckpointError(
                    f"checkpoint step {step} in {self.directory}: codec metadata has format "
                    f"{meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} "
                    f"version {' or '.join(map(str, READABLE_VERSIONS))}"
                )
            self._meta[step] = meta
        return self._meta[step]

    def _chain_metadata(self, step: int) -> dict[str, Any]:
        """:meth:`metadata` of a step that must be compressed (a step of a delta chain)."""
        meta = self.metadata(step)
        if meta is None:
            raise CorruptCheckpointError(
                f"step {step} in {self.directory} has no codec metadata, but a compressed chain reads it"
            )
        return meta

    # -- save ---------------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
        check_finite: bool = True,
    ) -> bool:
        """Snapshots ``state`` and compresses and writes it in the background.

        Blocks for the finiteness check and the snapshot (a device copy of the arrays, so the
        caller may donate ``state`` to its next step) and, when the previous save is still being
        encoded or written, for that one to finish. The encode (a keyframe or a residual of the previous
        save), the copy of the compressed arrays to the host and the Orbax write then run in a
        background thread, one tensor at a time at a lower scheduling priority, so the train step
        keeps the cores first. A failure in any phase is raised as ``CheckpointSaveError`` by the
        next :meth:`check`, :meth:`save`, :meth:`wait` or :meth:`close` and sticks; nothing of
        that step reaches the directory unless its files commit, and the next delta is coded
        against the last save that did. With ``async_save=False``, or for arrays over several CPU
        devices (XLA:CPU could deadlock two programs with collectives), all of it runs in the caller.

        Args:
            step, extra, force, check_finite: as for :meth:`Checkpointer.save`.
            state: the training state (any pytree; the lossy mode recognises ``params`` and the Adam
                ``mu`` / ``nu`` that mirror them).

        Returns:
            ``True`` if a save was started.

        Raises:
            NonFiniteStateError: the state holds NaN or Inf (nothing is written).
            CheckpointSaveError: this save (when it runs in the caller) or an earlier one failed.
        """
        # the previous save (encode, then Orbax's write): waits only while it still runs, and its
        # failure stops this one here, at the save point after it, before any encoding
        self._join()
        self._inner.wait()
        extra = _parse_json(dict(extra or {}), "extra")
        if not force and not self.should_save(step):
            return False
        if check_finite:
            bad = _nonfinite_paths(state)
            if bad:
                raise NonFiniteStateError(
                    f"refusing to save step {step} to {self.directory}: non-finite values in "
                    f"{len(bad)} leaves ({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}); "
                    f"the existing checkpoints {self.all_steps()} are kept"
                )
        plan = self.codec.plan(state, stacked=self._stacked)
        cfg = self.codec.cfg
        keyframe = self._ref is None or plan != self._ref_plan or self._deltas + 1 >= cfg.keyframe_every
        # the tree as Orbax stores it, leaves numbered: tools rebuild it without the model code
        index = jax.tree.unflatten(jax.tree.structure(state), list(range(len(plan))))
        tree = _jsonable(ocp.tree.serialize_tree(index, keep_empty_nodes=True))
        leaves = jax.tree.leaves(state)
        if not self._async or _multi_device_cpu(leaves):
            self._write(step, plan, leaves, keyframe, extra, force, tree, sequential=False)
            return True
        snapshot = _snapshot(leaves)

        def run() -> None:
            _lower_priority()
            try:
                self._write(step, plan, snapshot, keyframe, extra, force, tree, sequential=True)
            except BaseException as e:  # reported by the next check / save / wait / close
                self._job_failure = (step, e)

        self._pending = step
        self._job = threading.Thread(target=run, name=f"compressed-save-{step}", daemon=True)
        self._job.start()
        return True

    def _write(self, step, plan, leaves, keyframe, extra, force, tree, *, sequential: bool) -> None:
        """Encodes ``leaves``, copies the records to the host and hands them to Orbax; the
        reference of the next delta moves to this step only once Orbax has taken it."""
        enc = self.codec.encode(
            plan, leaves, None if keyframe else self._ref, keyframe=keyframe, sequential=sequential
        )
        sums, stats = jax.device_get((enc.checksums, enc.stats))
        meta = self._metadata(step, plan, keyframe, sums, stats, enc.records)
        meta["tree"] = tree
        self._refs[step] = meta["reference_step"]
        records = {_key(i): r for i, r in enc.records.items()}
        try:
            started = self._inner.save(
                step, records, extra=extra, force=force, check_finite=False, codec=meta
            )
        except BaseException:
            self._refs.pop(step, None)
            raise
        if not started:
            self._refs.pop(step, None)
            return
        self._meta[step] = meta
        self._ref = {i: x for i, x in enc.recon.items() if plan[i].kind in (WEIGHT, XOR)}
        self._ref_plan, self._ref_step = plan, step
        self._deltas = 0 if keyframe else self._deltas + 1

    def _metadata(self, step, plan, keyframe, sums, stats, records) -> dict[str, Any]:
        cfg = self.codec.cfg
        leaves = []
        for i, p in enumerate(plan):
            entry = {"path": p.path, "shape": list(p.shape), "dtype": p.dtype, "kind": p.kind}
            if p.kind in (WEIGHT, MOMENT):
                entry["grouped"] = p.grouped
            if p.kind == WEIGHT:
                entry["mu"], entry["nu"] = p.mu, p.nu
                if "outlier_value" in records.get(i, {}):
                    entry["outliers"] = int(records[i]["outlier_value"].shape[1])
                entry["stats"] = {k: float(v) for k, v in stats[i].items()}
            if i in sums:
                entry["checksums"] = {k: int(v) for k, v in sums[i].items()}
            leaves.append(entry)
        if keyframe:
            reference_step, keyframe_step = None, step
        else:
            assert self._ref_step is not None  # a delta follows a save or a restore, which set it
            reference_step, keyframe_step = self._ref_step, self._meta[self._ref_step]["keyframe_step"]
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "mode": cfg.mode,
            "step": step,
            "keyframe": keyframe,
            "reference_step": reference_step,
            "keyframe_step": keyframe_step,
            "bits": self.codec.bits(keyframe),
            "alpha": cfg.alpha,
            "beta": cfg.beta,
            "max_scale": cfg.max_scale,
            "outlier_fraction": cfg.outlier_fraction,
            "residual_gain": cfg.residual_gain,
            "momentum_gain": cfg.momentum_gain,
            "moment_fill": cfg.moment_fill,
            "leaves": leaves,
        }

    # -- restore ------------------------------------------------------------------------------------

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        fallback: bool = False,
        quarantine: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (latest by default) by walking its keyframe and deltas.

        Args:
            abstract_state: the target (``ShapeDtypeStruct`` leaves with the current shardings).
            step: the step; the latest by default.
            fallback: if the step (or a step it depends on) is unreadable or missing, try older
                steps instead of raising. Incompatible shapes never fall back.
            quarantine: with ``fallback``, move each unreadable step skipped aside, so that a run
                going on from an older step saves it anew.

        Returns:
            ``(state, extra)``; the state has ``abstract_state``'s structure and shardings.

        Raises:
            NoCheckpointError, IncompatibleCheckpointError, CorruptCheckpointError,
            MissingReferenceError: as described in the module docstring.
        """
        self.wait()
        return restore_with_fallback(
            self._restore_step,
            abstract_state,
            step,
            steps=self.all_steps(),
            fallback=fallback,
            directory=self.directory,
            quarantine=self.quarantine if quarantine else None,
        )

    def quarantine(self, step: int):
        """Moves the unreadable ``step`` aside (see :meth:`Checkpointer.quarantine`) and forgets it."""
        self._refs.pop(step, None)
        self._meta.pop(step, None)
        return self._inner.quarantine(step)

    def chain(self, step: int) -> list[int]:
        """The steps restored to rebuild ``step``: its keyframe first, ``step`` last.

        Raises:
            MissingReferenceError: a step of the chain is not in the directory.
        """
        steps = set(self.all_steps())
        chain = [step]
        while True:
            meta = self.metadata(chain[-1])
            if meta is None:
                if len(chain) == 1:
                    return chain  # a plain checkpoint
                raise CorruptCheckpointError(
                    f"step {chain[-2]} in {self.directory} references step {chain[-1]}, which has no codec metadata"
                )
            ref = meta.get("reference_step")
            if ref is None:
                return chain[::-1]
            if ref not in steps:
                raise MissingReferenceError(
                    f"compressed checkpoint step {step} in {self.directory} cannot be restored: it is a residual "
                    f"of step {ref} (keyframe step {meta.get('keyframe_step')}), which is missing; "
                    f"available steps: {sorted(steps)}"
                )
            if len(chain) > len(steps):
                raise CorruptCheckpointError(
                    f"the reference steps of step {step} in {self.directory} form a loop"
                )
            chain.append(ref)

    def _restore_step(self, target: Any, step: int) -> tuple[Any, dict[str, Any]]:
        meta = self.metadata(step)
        if meta is None:  # an uncompressed checkpoint in the same directory: restore as is
            state, extra = self._inner.restore(target, step)
            self._ref = None
            return state, extra
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        _check_leaves(meta, flat, step, self.directory)
        leaves, extra, recon, chain = self._restore_chain(step, [x for _, x in flat])
        state = jax.tree.unflatten(treedef, leaves)
        plan = _plan_from_meta(meta, leaves)
        # a copy: the caller may donate the restored state to its next training step
        self._ref = {i: jnp.copy(x) for i, x in recon.items() if plan[i].kind in (WEIGHT, XOR)}
        # the next save continues this chain when its layout is the restored one
        self._ref_plan = (
            self.codec.plan(state, stacked=self._stacked) if meta["mode"] == self.codec.cfg.mode else None
        )
        self._ref_step = step
        self._deltas = len(chain) - 1
        return state, extra

    def restore_leaves(self, step: int | None = None) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """Restores ``step`` (latest by default) as a flat list of arrays on one device, in the
        order of its metadata's ``leaves`` (for tools that do not know the state's tree).

        Returns:
            ``(leaves, extra, metadata)``.
        """
        self.wait()
        steps = self.all_steps()
        step = steps[-1] if step is None and steps else step
        if step is None or step not in steps:
            raise NoCheckpointError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}"
            )
        meta = self.metadata(step)
        if meta is None:
            raise CorruptCheckpointError(f"step {step} in {self.directory} is not a compressed checkpoint")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = [
            jax.ShapeDtypeStruct(tuple(e["shape"]), e["dtype"], sharding=device) for e in meta["leaves"]
        ]
        leaves, extra, _, _ = self._restore_chain(step, target)
        return leaves, extra, meta

    def _restore_chain(self, step: int, target: list[Any]) -> tuple[list[Any], dict, dict, list[int]]:
        """Walks keyframe -> deltas up to ``step`` onto the flat ``target`` leaves."""
        ref: dict | None = None
        extra: dict = {}
        recon: dict = {}
        records: dict = {}
        chain = self.chain(step)
        for s in chain:
            m = self._chain_metadata(s)
            if len(m["leaves"]) != len(target) or any(
                list(e["shape"]) != list(np.shape(x)) for e, x in zip(m["leaves"], target, strict=True)
            ):
                raise CorruptCheckpointError(
                    f"step {step} in {self.directory} depends on step {s}, whose tensors differ from it"
                )
            plan = _plan_from_meta(m, target)
            abstract = _abstract_records(plan, m)
            try:
                stored, extra = self._inner.restore(abstract, s)
            except IncompatibleCheckpointError as e:
                raise CorruptCheckpointError(
                    f"compressed checkpoint step {s} in {self.directory} does not match its own codec metadata:\n{e}"
                ) from e
            records = {int(k): r for k, r in stored.items()}
            recon, sums = self.codec.decode(
                plan, records, ref, keyframe=m["keyframe"], bits=m["bits"], version=m["version"]
            )
            _verify(m, jax.device_get(sums), s, self.directory)
            ref = recon
        meta = self._chain_metadata(step)
        leaves = [records[i]["value"] if e["kind"] == RAW else recon[i] for i, e in enumerate(meta["leaves"])]
        return leaves, extra, recon, chain


@jax.jit
def _copies(leaves: list[jax.Array]) -> list[jax.Array]:
    return [jnp.copy(x) for x in leaves]


def _snapshot(leaves: list[Any]) -> list[Any]:
    """Device copies of the ``jax.Array`` leaves (one program, dispatched without waiting), so the
    caller may donate or overwrite the originals while the copies are encoded; host values as they are."""
    index = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array)]
    out = list(leaves)
    for i, x in zip(index, _copies([leaves[i] for i in index]), strict=True):
        out[i] = x
    return out


def _multi_device_cpu(leaves: list[Any]) -> bool:
    return jax.default_backend() == "cpu" and any(
        isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 for x in leaves
    )


# nice value of the background encode thread: below the train step's threads, yet not starved by
# other processes on a shared machine (10 gave it a tenth of a core under load)
BACKGROUND_NICENESS = 5


def _lower_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Lowers this thread's scheduling priority (Linux: the thread's own nice value); best effort."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not permitted: the priority stays as it is
        pass


def _jsonable(tree: Any) -> Any:
    """Orbax's serialised tree as JSON: mappings (an empty ``nnx.State`` too) become dicts."""
    if isinstance(tree, Mapping) or hasattr(tree, "items"):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    if tree is None or isinstance(tree, int):
        return tree
    return {}


def _check_leaves(meta: dict, flat: list, step: int, directory: Any) -> None:
    saved = {e["path"]: e for e in meta["leaves"]}
    target = {jax.tree_util.keystr(p): x for p, x in flat}
    changed, missing = [], []
    for path, x in target.items():
        e = saved.get(path)
        if e is None:
            missing.append(path)
            continue
        shape = list(np.shape(x))
        dtype = (
            str(np.dtype(x.dtype))
            if hasattr(x, "dtype") and not _is_key(x.dtype)
            else str(getattr(x, "dtype", None))
        )
        if e["shape"] != shape or (hasattr(x, "dtype") and e["dtype"] != dtype):
            changed.append(f"{path}: saved {tuple(e['shape'])} {e['dtype']}, expected {tuple(shape)} {dtype}")
    unexpected = [p for p in saved if p not in target]
    order_ok = [e["path"] for e in meta["leaves"]] == list(target)
    if changed or missing or unexpected or not order_ok:
        lines = [f"compressed checkpoint {directory} step {step} does not match the restore target:"]
        lines += _listing("shape or dtype differs (saved vs expected)", changed)
        lines += _listing("expected but not in the checkpoint", missing)
        lines += _listing("in the checkpoint but not expected", unexpected)
        if not (changed or missing or unexpected):
            lines.append("  the leaves are the same but in another order")
        lines.append(
            "The model or optimizer differs from the one this checkpoint was written with; restore "
            "with the saved config or start a new run directory."
        )
        raise IncompatibleCheckpointError("\n".join(lines))


def _is_key(dtype: Any) -> bool:
    try:
        return jax.numpy.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _plan_from_meta(meta: dict, target: list) -> tuple[LeafPlan, ...]:
    """The saved layout (kinds, grouping, moments) with the target leaves' shardings."""
    plans = []
    for e, x in zip(meta["leaves"], target, strict=True):
        sharding = getattr(x, "sharding", None) if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else None
        plans.append(
            LeafPlan(
                e["path"],
                tuple(e["shape"]),
                e["dtype"],
                e["kind"],
                bool(e.get("grouped", False)),
                int(e.get("mu", -1)),
                int(e.get("nu", -1)),
                sharding,
            )
        )
    for p in list(plans):  # a moment's grouping is its weight's
        for j in (p.mu, p.nu):
            if j >= 0:
                plans[j] = plans[j]._replace(grouped=p.grouped)
    return tuple(plans)


def _abstract_records(plan: Sequence[LeafPlan], meta: dict) -> dict:
    """The restore target of a step's records: shapes from the layout and bits, shardings derived
    from the target leaves' shardings."""
    bits = meta["bits"]
    out: dict = {}
    for i, p in enumerate(plan):
        entry = meta["leaves"][i]
        if p.kind == RAW:
            if p.sharding is None:  # a Python scalar or host array: Orbax restores its own type
                out[_key(i)] = {"value": _host_target(entry)}
            else:
                out[_key(i)] = {"value": jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding)}
        elif p.kind == XOR:
            size = np.dtype(p.dtype).itemsize
            out[_key(i)] = {
                "planes": jax.ShapeDtypeStruct((size, *p.shape), np.uint8, sharding=planes_sharding(p))
            }
        else:
            b = bits["weights"] if p.kind == WEIGHT else bits["moments"]
            groups = p.shape[0] if p.grouped else 1
            planes = (b, *p.shape[:-1], -(-p.shape[-1] // 8))
            rec = {
                "planes": jax.ShapeDtypeStruct(planes, np.uint8, sharding=packed_sharding(p)),
                "codebook": jax.ShapeDtypeStruct((groups, 1 << b), np.float32, sharding=replicated(p)),
            }
            if p.kind == WEIGHT or "threshold" in entry.get("checksums", {}):
                rec["threshold"] = jax.ShapeDtypeStruct((groups,), np.float32, sharding=replicated(p))
            k = int(entry.get("outliers", 0))
            if k:  # CodecConfig.outlier_fraction: coordinates and exact values
                ndim = len(p.shape) - (1 if p.grouped else 0)
                rec["outlier_index"] = jax.ShapeDtypeStruct(
                    (groups, k, ndim), np.int32, sharding=replicated(p)
                )
                rec["outlier_value"] = jax.ShapeDtypeStruct((groups, k), np.float32, sharding=replicated(p))
            if "fill_rows" in entry.get(
                "checksums", {}
            ):  # the second moment's fill (CodecConfig.moment_fill)
                inner = p.shape[1:] if p.grouped else p.shape
                rec["fill_rows"] = jax.ShapeDtypeStruct(
                    (groups, *inner[:-1]), np.int16, sharding=replicated(p)
                )
                rec["fill_cols"] = jax.ShapeDtypeStruct((groups, inner[-1]), np.int16, sharding=replicated(p))
            out[_key(i)] = rec
    return out


def _host_target(entry: dict) -> Any:
    if entry["shape"]:
        return np.zeros(entry["shape"], entry["dtype"])
    return np.zeros((), entry["dtype"])[()]


def _verify(meta: dict, sums: dict, step: int, directory: Any) -> None:
    bad = []
    for i, entry in enumerate(meta["leaves"]):
        want = entry.get("checksums")
        if not want:
            continue
        got = sums.get(i, {})
        for field, value in want.items():
            if field not in got or int(got[field]) != int(value):
                bad.append(f"{entry['path']} ({field})")
    if bad:
        raise CorruptCheckpointError(
            f"compressed checkpoint step {step} in {directory} is corrupt: the stored arrays of "
            f"{len(bad)} tensors do not match their checksums: {', '.join(bad[:10])}"
            f"{', ...' if len(bad) > 10 else ''}"
        )


def checkpointer_from_config(cfg: CheckpointConfig, directory: str | os.PathLike[str], **kwargs: Any):
    """A :class:`Checkpointer`, or a :class:`CompressedCheckpointer` when ``cfg.codec`` is set.

    Args:
        cfg: when to save, how many to keep, and the codec (``None``: plain Orbax).
        directory: the checkpoint directory.
        **kwargs: passed on (``config_json``, ``read_only``, ...).
    """
    common = dict(
        max_to_keep=cfg.keep, keep_every=cfg.keep_every or None, async_save=cfg.async_save, **kwargs
    )
    if cfg.codec is None:
        return Checkpointer(directory, **common)
    return CompressedCheckpointer(directory, cfg.codec, **common)


def numbered_tree(tree: Any, leaves: list[Any]) -> Any:
    """A tree recorded in a compressed checkpoint's metadata (Orbax's serialised form, its leaves
    numbered) with ``leaves`` in place of the numbers."""
    if isinstance(tree, bool) or tree is None:
        return tree
    if isinstance(tree, int):
        return leaves[tree]
    if isinstance(tree, list):
        return [numbered_tree(t, leaves) for t in tree]
    return {k: numbered_tree(v, leaves) for k, v in tree.items()}
