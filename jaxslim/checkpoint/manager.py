"""Save, retain and restore training state with Orbax, behind one small class.

:class:`Checkpointer` wraps an Orbax ``CheckpointManager``. Each step directory holds three items:

- ``state``: any pytree of arrays (``jax.Array`` in any sharding, numpy arrays, Python scalars,
  typed PRNG keys), written with ``StandardSave`` (TensorStore arrays in an OCDBT database, zstd);
- ``extra``: a small JSON dict (the data iterator's position, anything else a run needs);
- ``config``: the resolved run config as JSON, when the checkpointer was given one.

The same config is also written to ``<directory>/config.json``, atomically (temporary file then
rename). When that file already holds a *different* config (a run resumed with changed settings),
the old file is first copied to ``config.previous-<n>.json`` and a warning is logged, so nothing is
clobbered silently; every step keeps the exact config it was saved with in its own ``config`` item.

Guarantees, all inherited from Orbax's commit protocol and checked in the tests:

- A save writes into ``<step>.orbax-checkpoint-tmp*`` and renames it to ``<step>`` only after
  every item is written, so a process killed mid-save leaves earlier checkpoints untouched and
  the partial step is never listed; leftover temporary directories are removed the next time a
  checkpointer opens the directory.
- Old steps are deleted (keep-last-N, keep-every-K) only after the new step has committed.
- An existing step is never overwritten, and by default a state holding NaN or Inf is refused
  before anything touches the disk, so a bad step cannot push the last good checkpoint out.

Restores always go through an abstract target (``jax.ShapeDtypeStruct`` leaves carrying the
*current* shardings), so a run saved on one mesh restores onto another. The saved shapes and dtypes
are compared with the target first, and every mismatch is reported in one
:class:`IncompatibleCheckpointError`.

Example:
    >>> import jax, jax.numpy as jnp, tempfile
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2, async_save=False)
    >>> state = {"w": jnp.ones((2, 3)), "step": jnp.int32(10)}
    >>> ckpt.save(10, state, extra={"data": {"epoch": 0}})
    True
    >>> restored, extra = ckpt.restore(abstract_like(state))
    >>> extra
    {'data': {'epoch': 0}}
    >>> ckpt.close()
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxslim.paths import absolute_uri

StepAlreadyExistsError = ocp.checkpoint_manager.StepAlreadyExistsError

log = logging.getLogger(__name__)

STATE, EXTRA, CONFIG, CODEC = "state", "extra", "config", "codec"
CONFIG_FILE = "config.json"
# unreadable steps skipped by a fallback restore are moved here (never deleted)
QUARANTINE = "quarantine"
# Orbax numbers save operations with one process-wide counter that its threads read back, so the
# synchronous parts of two saves (of two checkpointers, from two threads: a compressed checkpointer
# saves from its background thread) must not overlap.
_ORBAX_SAVE_LOCK = threading.Lock()
# Mismatch listings longer than this are cut, with a count of what was left out.
_MAX_LISTED = 40


class IncompatibleCheckpointError(ValueError):
    """The checkpoint's tree (paths, shapes, dtypes) does not match the restore target."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint step exists but could not be read (damaged or incomplete files)."""


class NoCheckpointError(FileNotFoundError):
    """The directory holds no checkpoint, or not the requested step."""


class NonFiniteStateError(ValueError):
    """A save was refused because the state holds NaN or Inf values."""


class CheckpointSaveError(RuntimeError):
    """A save failed (in any phase: serialisation, commit, metadata), in the caller's thread or in
    Orbax's background threads. The step was not committed; earlier checkpoints are untouched.

    Once raised, the checkpointer refuses further saves with the same error: a run must not go on
    believing it is checkpointed.
    """


# -- abstract targets -----------------------------------------------------------------------------


def _abstract_leaf(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    # numpy arrays and Python scalars are their own targets: Orbax restores them as the same type.
    return x


def abstract_like(state: Any) -> Any:
    """The restore target of ``state``: each ``jax.Array`` becomes a ``ShapeDtypeStruct`` with its sharding.

    numpy arrays and Python scalars are kept as they are (Orbax restores them as the same type),
    and ``ShapeDtypeStruct`` leaves pass through, so the function is idempotent.

    Args:
        state: a pytree of arrays (``nnx.State``, dicts, NamedTuples, optax states, ...).

    Returns:
        A pytree of the same structure usable as the ``abstract_state`` of :meth:`Checkpointer.restore`.

    Example:
        >>> import jax.numpy as jnp
        >>> abstract_like({"w": jnp.zeros((2, 3))})["w"].shape
        (2, 3)
    """
    return jax.tree.map(_abstract_leaf, state)


def abstract_from_shardings(abstract: Any, shardings: Any) -> Any:
    """Attaches ``shardings`` to the leaves of an abstract (or concrete) tree.

    ``shardings`` may have the same structure as ``abstract`` or be a prefix of it: a
    ``NamedSharding`` standing where ``abstract`` has a subtree (for example where
    :func:`jaxslim.sharding.state_shardings` returns one sharding per ``nnx.Variable``) applies to
    every leaf of that subtree. A ``None`` sharding leaves the subtree unsharded (restored as numpy).

    Args:
        abstract: a pytree of arrays or ``ShapeDtypeStruct`` (e.g. from ``nnx.eval_shape`` or
            ``jax.eval_shape``).
        shardings: a pytree of ``jax.sharding.Sharding`` (or ``None``) matching ``abstract``.

    Returns:
        ``abstract`` with each leaf replaced by a ``ShapeDtypeStruct`` carrying its sharding.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec
        >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])
        >>> shapes = jax.eval_shape(lambda: {"w": jnp.zeros((4, 2))})
        >>> t = abstract_from_shardings(shapes, {"w": NamedSharding(mesh, PartitionSpec("data"))})
        >>> t["w"].sharding.spec == PartitionSpec("data")
        True
    """

    def attach(sharding: Any, subtree: Any) -> Any:
        def leaf(x: Any) -> Any:
            shape, dtype = np.shape(x), getattr(x, "dtype", None)
            if dtype is None:  # a Python scalar: restored as the same Python type
                return x
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

        return jax.tree.map(leaf, subtree)

    return jax.tree.map(attach, shardings, abstract, is_leaf=lambda s: s is None)


# -- tree comparison ------------------------------------------------------------------------------


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    """Flat ``{path: leaf}`` in Orbax's own serialised key form; empty nodes (optax's ``EmptyState``) hold
    their list index so later siblings keep theirs, then drop out of the flat dict."""
    return ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))


def _stored_shape_dtype(x: Any) -> tuple[tuple[int, ...], str | None]:
    """Shape and dtype a target leaf will have on disk (typed PRNG keys are stored as key data)."""
    if isinstance(x, (jax.ShapeDtypeStruct, jax.Array)) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
        return tuple(data.shape), str(data.dtype)
    dtype = getattr(x, "dtype", None)
    # A Python scalar target is restored as its own type whatever was stored: check no dtype.
    return tuple(np.shape(x)), (None if dtype is None else str(np.dtype(dtype)))


def _path(key: tuple[str, ...]) -> str:
    return "/".join(key)


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = lines[:_MAX_LISTED]
    more = [f"    ... and {len(lines) - len(shown)} more"] if len(lines) > len(shown) else []
    return [f"  {title} ({len(lines)}):"] + [f"    {s}" for s in shown] + more


def _tree_mismatches(
    saved: Mapping[tuple[str, ...], Any], target: Mapping[tuple[str, ...], Any]
) -> list[str]:
    """Human-readable lines for every path whose shape or dtype differs, is missing or unexpected."""
    changed, missing, unexpected = [], [], []
    for key in sorted(target):
        if key not in saved:
            missing.append(_path(key))
            continue
        want_shape, want_dtype = _stored_shape_dtype(target[key])
        meta = saved[key]
        have_shape = tuple(getattr(meta, "shape", ()) or ())
        have_dtype = getattr(meta, "dtype", None)
        have_dtype = None if have_dtype is None else str(np.dtype(have_dtype))
        dtype_differs = want_dtype is not None and have_dtype is not None and want_dtype != have_dtype
        if have_shape != want_shape or dtype_differs:
            changed.append(
                f"{_path(key)}: saved {have_shape} {have_dtype}, expected {want_shape} {want_dtype}"
            )
    unexpected = [_path(k) for k in sorted(saved) if k not in target]
    return (
        _listing("shape or dtype differs (saved vs expected)", changed)
        + _listing("expected but not in the checkpoint", missing)
        + _listing("in the checkpoint but not expected", unexpected)
    )


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two JSON configs differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{p}: absent -> {new[k]!r}")
            elif k not in new:
                out.append(f"{p}: {old[k]!r} -> absent")
            else:
                out.extend(_config_diff(old[k], new[k], p))
        return out
    return [] if old == new else [f"{prefix or '<root>'}: {old!r} -> {new!r}"]


# -- finiteness -----------------------------------------------------------------------------------


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def _nonfinite_paths(state: Any) -> list[str]:
    """Paths of the floating-point leaves of ``state`` that hold a NaN or an Inf."""
    device: list[tuple[str, jax.Array]] = []
    host: list[tuple[str, Any]] = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        (device if isinstance(x, jax.Array) else host).append((jax.tree_util.keystr(path), x))
    bad = [p for p, x in host if not np.isfinite(np.asarray(x)).all()]
    if device:
        # One executable reduces every device leaf where it lives: one collective round on a
        # multi-process mesh instead of one per leaf; only the booleans travel to the host.
        flags = jax.device_get(_all_finite([x for _, x in device]))
        bad += [p for (p, _), ok in zip(device, flags, strict=True) if not bool(ok)]
    return bad


# -- the checkpointer -----------------------------------------------------------------------------


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Handlers for the three items, registered up front so metadata is readable before any save."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    items = (
        (STATE, ocp.args.StandardSave, ocp.args.StandardRestore, ocp.StandardCheckpointHandler),
        (EXTRA, ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler),
        (CONFIG, ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler),
        (CODEC, ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler),
    )
    for name, save_args, restore_args, handler in items:
        registry.add(name, save_args, handler)
        registry.add(name, restore_args, handler)
    return registry


class _KeepDependencies:
    """Preserves what ``base`` preserves plus every step those steps depend on, transitively (the
    keyframe and deltas a compressed checkpoint is reconstructed from)."""

    def __init__(self, base: Any, depends_on: Callable[[int], Sequence[int]]) -> None:
        self.base, self.depends_on = base, depends_on

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        keep = list(self.base.should_preserve(checkpoints, context=context))
        index = {c.step: i for i, c in enumerate(checkpoints)}
        todo = [c.step for c, k in zip(checkpoints, keep, strict=True) if k]
        while todo:
            for dep in self.depends_on(todo.pop()):
                i = index.get(dep)
                if i is not None and not keep[i]:
                    keep[i] = True
                    todo.append(dep)
        return keep


def _check_count(name: str, value: int | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        allowed = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"Checkpointer: {name} must be {allowed}, got {value!r}")


def restore_with_fallback(
    restore_step: Callable[[Any, int], tuple[Any, dict[str, Any]]],
    abstract_state: Any,
    step: int | None,
    *,
    steps: Sequence[int],
    fallback: bool,
    directory: Any,
    quarantine: Callable[[int], Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """``restore_step(target, s)`` for ``step`` (the latest of ``steps`` by default) and, with
    ``fallback``, for each older step in turn while they raise :class:`CorruptCheckpointError`;
    each step skipped so is passed to ``quarantine`` (which moves it aside), so that training
    saves that step again instead of finding it taken.

    Raises:
        NoCheckpointError: ``steps`` is empty or lacks ``step``.
        CorruptCheckpointError: the step (with ``fallback``: every candidate) is unreadable; the
            message lists each failure.
    """
    if not steps:
        raise NoCheckpointError(f"no checkpoint to restore in {directory} (the directory holds no steps)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise NoCheckpointError(
            f"no checkpoint for step {step} in {directory}; available steps: {list(steps)}"
        )
    candidates = [step] + ([s for s in reversed(steps) if s < step] if fallback else [])
    target = abstract_like(abstract_state)
    failures: list[str] = []
    for s in candidates:
        try:
            return restore_step(target, s)
        except CorruptCheckpointError as e:
            if not fallback:
                raise
            moved = quarantine(s) if quarantine is not None else None
            where = f"; moved to {moved}" if moved is not None else ""
            log.warning("skipping unreadable checkpoint step %d in %s%s: %s", s, directory, where, e)
            failures.append(f"step {s}: {e}")
    raise CorruptCheckpointError(
        f"no readable checkpoint at or before step {step} in {directory}:\n" + "\n".join(failures)
    )


class Checkpointer:
    """Async, retained, resumable checkpoints of a training state in one directory.

    Args:
        directory: where step directories (``<directory>/<step>/``) and ``config.json`` live;
            created unless ``read_only``. Local paths and anything ``etils.epath`` accepts
            (``gs://...``) work.
        max_to_keep: keep the most recent this many checkpoints (``None``: keep all).
        keep_every: also keep, forever, every checkpoint whose step is a multiple of this.
        async_save: write in background threads; :meth:`save` blocks only for the device-to-host
            copy. Call :meth:`wait` (or :meth:`close`) before reading the files or exiting.
        save_every: :meth:`save` writes only at steps that are multiples of this (``force=True``
            overrides it).
        config_json: the resolved run config, as JSON text or a JSON-serialisable mapping; written
            to ``<directory>/config.json`` at the first save (a differing older one is kept as
            ``config.previous-<n>.json``) and into every step.
        read_only: open an existing directory for restoring only (nothing is created or deleted).
        depends_on: ``step -> steps it needs to be restored`` (compressed checkpoints: the
            reference it is a residual of); retention keeps those of every kept step.

    Raises:
        ValueError: for a bad retention setting or a config that is not JSON.

    Example:
        >>> import jax.numpy as jnp, tempfile
        >>> with Checkpointer(tempfile.mkdtemp(), max_to_keep=3, keep_every=100) as ckpt:
        ...     for step in (1, 2):
        ...         _ = ckpt.save(step, {"w": jnp.full((2,), float(step))})
        ...     ckpt.wait()
        ...     ckpt.all_steps()
        [1, 2]
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_to_keep: int | None = 3,
        keep_every: int | None = None,
        async_save: bool = True,
        save_every: int = 1,
        config_json: str | Mapping[str, Any] | None = None,
        read_only: bool = False,
        depends_on: Callable[[int], Sequence[int]] | None = None,
    ) -> None:
        _check_count("max_to_keep", max_to_keep, allow_none=True)
        _check_count("keep_every", keep_every, allow_none=True)
        _check_count("save_every", save_every, allow_none=False)
        # Orbax requires absolute directories (and says so only from a background thread).
        self._dir = absolute_uri(directory)
        self._config = _parse_config(config_json)
        if read_only and not self._dir.exists():
            raise NoCheckpointError(f"checkpoint directory {self._dir} does not exist")

        policies: list[Any] = [ocp.checkpoint_managers.LatestN(max_to_keep)]
        if keep_every is not None:
            policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
        preservation = (
            policies[0] if len(policies) == 1 else ocp.checkpoint_managers.AnyPreservationPolicy(policies)
        )
        if depends_on is not None:
            preservation = _KeepDependencies(preservation, depends_on)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation,
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            enable_async_checkpointing=async_save,
            # A save killed mid-way leaves a *.orbax-checkpoint-tmp directory; remove it on open.
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(self._dir, options=options, handler_registry=_registry())
        # written with the first save, so a run refused at restore (other shapes) changes nothing
        self._config_written = read_only
        self._read_only = read_only
        # the step of the newest save started, and the failure of a save once seen (sticky)
        self._pending_step: int | None = None
        self._save_error: CheckpointSaveError | None = None

    # -- context manager and lifecycle ------------------------------------------------------------

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def directory(self) -> epath.Path:
        """The checkpoint directory."""
        return self._dir

    def wait(self) -> None:
        """Blocks until every pending async save has committed.

        Raises:
            CheckpointSaveError: a save failed (now or earlier); the message names the step, the
                directory, the cause and the checkpoints that are kept.
        """
        if self._save_error is not None:
            raise self._save_error
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._failed(e)

    def check(self) -> None:
        """Raises if a background save has failed; never blocks for a save still in progress.

        Cheap enough to call after every training step, so a failed save stops a run at the next
        step rather than at the next save point.

        Raises:
            CheckpointSaveError: as for :meth:`wait`.
        """
        if self._save_error is not None:
            raise self._save_error
        if not self._manager.is_saving_in_progress():
            self.wait()  # the finished save's thread: joins at once, re-raising its failure

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's threads.

        Raises:
            CheckpointSaveError: the last save failed (the threads are released all the same).
        """
        error = None
        try:
            self.wait()
        except CheckpointSaveError as e:
            error = e
        try:
            self._manager.close()
        except Exception as e:  # a failure already reported above is not reported twice
            if error is None:
                error = self._failed(e, raise_=False)
        if error is not None:
            raise error

    def record_failure(self, step: int, cause: BaseException) -> CheckpointSaveError:
        """Records that saving ``step`` failed before it reached Orbax (e.g. while a compressed
        state was encoded in the background) and returns the sticky error; the first failure
        recorded stays the one reported."""
        if self._save_error is not None:
            return self._save_error
        self._pending_step = step
        return self._failed(cause, raise_=False)

    def _failed(self, cause: BaseException, *, raise_: bool = True) -> CheckpointSaveError:
        """Records a failed save and raises (or returns) the error naming it."""
        # A failed save may still be listed in the manager's memory; re-read the disk so retention
        # and latest_step never count a step that was not committed.
        try:
            self._manager.reload()
        except Exception:  # the directory itself may be what failed; the listing stays as it was
            log.debug("could not re-read %s after a failed save", self._dir, exc_info=True)
        _join_background_threads(timeout=10.0)
        step = "" if self._pending_step is None else f" step {self._pending_step}"
        try:
            kept = f"the checkpoints {self.all_steps()} already saved are kept"
        except Exception:
            kept = "the checkpoints already saved are kept"
        self._save_error = CheckpointSaveError(
            f"saving checkpoint{step} to {self._dir} failed: {type(cause).__name__}: "
            f"{_first_line(cause)}; {kept}"
        )
        self._save_error.__cause__ = cause
        if raise_:
            raise self._save_error from cause
        return self._save_error

    # -- steps ------------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed (or, with async saves, in-flight) steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step, or ``None`` when there is no checkpoint (the resume point)."""
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` would write at ``step`` (a multiple of ``save_every`` past the latest)."""
        return self._manager.should_save(step)

    # -- save -------------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        *,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
        check_finite: bool = True,
        codec: Mapping[str, Any] | None = None,
    ) -> bool:
        """Saves ``state`` (and ``extra``) as checkpoint ``step``.

        Returns once the arrays are copied off the device when saving asynchronously; the files
        commit in the background. Old steps beyond the retention policy are deleted only after
        the new one has committed.

        Args:
            step: the training step; must be newer than :meth:`latest_step`.
            state: any pytree of arrays (``jax.Array`` in any sharding, numpy, Python scalars,
                typed PRNG keys).
            extra: a JSON-serialisable dict stored beside the state (e.g. the data iterator's
                position); returned by :meth:`restore`.
            codec: JSON metadata of a compressed state, saved as its own item (see
                :meth:`codec`).
            force: save even when ``step`` is not a multiple of ``save_every``.
            check_finite: refuse a state with NaN or Inf in a floating-point leaf (one small
                reduction per leaf), so a diverged run cannot replace good checkpoints.

        Returns:
            ``True`` if a save was started; ``False`` when skipped (``save_every`` or a step not
            newer than the latest one, unless ``force``).

        Raises:
            NonFiniteStateError: ``check_finite`` and a leaf holds NaN or Inf.
            TypeError: ``extra`` is not JSON-serialisable.
            ValueError: ``force`` and ``step`` already exists (nothing is overwritten).
            CheckpointSaveError: this save, or an earlier one still pending, failed.
        """
        extra_json = _parse_json(dict(extra or {}), "extra")
        self.check()
        if not force and not self.should_save(step):
            return False
        if check_finite:
            bad = _nonfinite_paths(state)
            if bad:
                raise NonFiniteStateError(
                    f"refusing to save step {step} to {self._dir}: non-finite values in "
                    f"{len(bad)} leaves ({', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}); "
                    f"the existing checkpoints {self.all_steps()} are kept"
                )
        items = {STATE: ocp.args.StandardSave(state), EXTRA: ocp.args.JsonSave(extra_json)}
        if self._config is not None:
            items[CONFIG] = ocp.args.JsonSave(self._config)
        if codec is not None:
            items[CODEC] = ocp.args.JsonSave(_parse_json(dict(codec), "codec"))
        # the previous save first, so its failure is reported as its own and not as this one's
        self.wait()
        self._pending_step = step
        try:
            if self._config is not None and not self._config_written and jax.process_index() == 0:
                self._write_root_config(self._config)
            self._config_written = True
            with _ORBAX_SAVE_LOCK:
                return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except StepAlreadyExistsError:
            raise  # a ValueError: the caller asked to overwrite a step; nothing was written
        except Exception as e:  # the synchronous part: directories, device-to-host copies, ...
            raise self._failed(e, raise_=False) from e

    # -- restore ----------------------------------------------------------------------------------

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        fallback: bool = False,
        quarantine: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """Restores a step into the structure, shapes and shardings of ``abstract_state``.

        Args:
            abstract_state: the target: a pytree of ``jax.ShapeDtypeStruct`` with ``sharding=``
                (see :func:`abstract_like`, :func:`abstract_from_shardings`); concrete
                ``jax.Array`` leaves are accepted and stand for their own shape and sharding.
                The arrays come back in these shardings, whatever mesh the checkpoint was saved on.
            step: the step to restore; the latest one by default.
            fallback: if the chosen step cannot be read (damaged files), try the next older
                steps in turn instead of raising. Incompatible shapes never fall back.
            quarantine: with ``fallback``, move each unreadable step skipped aside (see
                :meth:`quarantine`), so that a run going on from the older step saves it anew.

        Returns:
            ``(state, extra)``: the restored pytree (same structure as ``abstract_state``) and the
            ``extra`` dict saved with it.

        Raises:
            NoCheckpointError: no checkpoint in the directory, or no such ``step``.
            IncompatibleCheckpointError: paths, shapes or dtypes differ from the target (all of
                them are listed, with saved and expected shapes).
            CorruptCheckpointError: the step (and, with ``fallback``, every older one) is unreadable.
        """
        self.wait()
        return restore_with_fallback(
            self._restore_step,
            abstract_state,
            step,
            steps=self.all_steps(),
            fallback=fallback,
            directory=self._dir,
            quarantine=self.quarantine if quarantine else None,
        )

    def quarantine(self, step: int) -> epath.Path | None:
        """Moves the (unreadable) ``step`` aside to ``<directory>/quarantine/<step>-<UTC time>``, so
        the step can be saved again; nothing is deleted. Returns the new place (``None`` when the
        step directory is absent).

        Raises:
            ValueError: the checkpointer is read-only.
        """
        if self._read_only:
            raise ValueError(f"Checkpointer: {self._dir} is open read-only; cannot move step {step} aside")
        src = self._step_dir(step)
        if not src.exists():
            return None
        import datetime

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        dst = self._dir / QUARANTINE / f"{step}-{stamp}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)
        self._manager.reload()  # the step is no longer listed
        return dst

    def _restore_step(self, target: Any, step: int) -> tuple[Any, dict[str, Any]]:
        self._check_compatible(target, step)
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target), EXTRA: ocp.args.JsonRestore()})
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:  # TensorStore reports damaged files as ValueError / OSError
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self._dir} could not be read (arrays): "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
        return restored[STATE], dict(restored[EXTRA] or {})

    def restore_as_saved(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (latest by default) in the tree, shapes and dtypes it was saved with,
        on one device, without a target (for tools that do not know the model, e.g.
        ``jaxslim-ckpt``). Containers come back as Orbax stores them: dicts and lists.

        Raises:
            NoCheckpointError, CorruptCheckpointError: as for :meth:`restore`.
        """
        self.wait()
        steps = self.all_steps()
        step = steps[-1] if step is None and steps else step
        if step is None or step not in steps:
            raise NoCheckpointError(f"no checkpoint for step {step} in {self._dir}; available steps: {steps}")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def leaf(m: Any) -> Any:
            return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device)

        target = jax.tree.map(leaf, self._state_metadata(step), is_leaf=lambda m: hasattr(m, "shape"))
        return self._restore_step(target, step)

    def _state_metadata(self, step: int) -> Any:
        try:
            meta = self._manager.item_metadata(step)
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self._dir} could not be read (metadata): "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
        tree = meta[STATE] if STATE in meta else None
        if tree is None:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self._dir} could not be read (no '{STATE}' item)"
            )
        return tree

    def _check_compatible(self, target: Any, step: int) -> None:
        saved = _flat(self._state_metadata(step))
        problems = _tree_mismatches(saved, _flat(target))
        if not problems:
            return
        codec = self.codec(step)
        if codec is not None:  # the records of a compressed state, read as if they were the state
            mode = codec.get("mode", "?")
            raise IncompatibleCheckpointError(
                f"checkpoint step {step} in {self._dir} is a compressed checkpoint (mode {mode!r}); "
                f"restore it with CompressedCheckpointer (jaxslim-train: --checkpoint.compression {mode})"
            )
        lines = [
            f"checkpoint {self._dir} step {step} does not match the restore target:",
            *problems,
        ]
        saved_config = self.config(step) if self._config is not None else None
        if saved_config is not None:
            diff = _config_diff(saved_config, self._config)
            if diff:
                lines += _listing("config differences (saved -> current)", diff)
        lines.append(
            "The model or optimizer differs from the one this checkpoint was written with; restore "
            "with the saved config or start a new run directory."
        )
        raise IncompatibleCheckpointError("\n".join(lines))

    # -- config -----------------------------------------------------------------------------------

    def config(self, step: int | None = None) -> dict[str, Any] | None:
        """The config saved with ``step`` (latest by default), or ``None`` if it has none."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        if not (self._step_dir(step) / CONFIG).exists():
            return None
        return self._read_json(step, CONFIG, "config")

    def extra(self, step: int | None = None) -> dict[str, Any]:
        """The ``extra`` dict saved with ``step`` (latest by default) without restoring the state,
        e.g. to learn what a run's state looks like before building the restore target."""
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise NoCheckpointError(f"no checkpoint in {self._dir}")
        return dict(self._read_json(step, EXTRA, "extra") or {})

    def codec(self, step: int) -> dict[str, Any] | None:
        """The compressed-state metadata saved with ``step``, or ``None`` for a plain checkpoint.

        Raises:
            CorruptCheckpointError: the item exists but cannot be read.
        """
        if not (self._step_dir(step) / CODEC).exists():
            return None
        return self._read_json(step, CODEC, "codec metadata")

    def _read_json(self, step: int, item: str, what: str) -> Any:
        """The JSON item ``item`` of ``step``; a failed read raises CorruptCheckpointError naming ``what``."""
        try:
            args = ocp.args.Composite(**{item: ocp.args.JsonRestore()})
            return self._manager.restore(step, args=args)[item]
        except Exception as e:
            raise CorruptCheckpointError(
                f"checkpoint step {step} in {self._dir} could not be read ({what}): {_first_line(e)}"
            ) from e

    def _step_dir(self, step: int) -> epath.Path:
        return ocp.path.step.build_step_path(self._dir, ocp.path.step.standard_name_format(), step)

    def _write_root_config(self, config: dict[str, Any]) -> None:
        path = self._dir / CONFIG_FILE
        text = json.dumps(config, indent=1, sort_keys=True)
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
            if old == config:
                return
            n = 1
            while (self._dir / f"config.previous-{n}.json").exists():
                n += 1
            backup = self._dir / f"config.previous-{n}.json"
            # Copy, not rename: config.json must exist at every instant, even if killed here.
            _atomic_write(backup, path.read_text())
            diff = _config_diff(old, config) if old is not None else ["<unreadable previous config>"]
            log.warning(
                "the config in %s differs from the saved one (%s); the previous one is kept as %s",
                path,
                "; ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""),
                backup.name,
            )
        _atomic_write(path, text)


def _join_background_threads(timeout: float) -> None:
    """Ends the background threads of a failed Orbax save, waiting up to ``timeout`` seconds.

    When one part of an Orbax save fails, its sibling threads (other items, the metadata writer)
    are still running, some waiting for signals the failed part will never send. They are given a
    moment to end, then cancelled, so they log before the caller reports the failure instead of
    failing again, mid-shutdown, after the process has said why it stops.
    """
    import threading
    import time

    def commit_threads() -> list[Any]:  # Orbax's private thread class, which adds cancel()
        # Orbax runs each commit future in a thread of this class (and cancels it by ``cancel()``).
        return [
            t
            for t in threading.enumerate()
            if type(t).__name__ == "_SignalingThread" and t.is_alive() and hasattr(t, "cancel")
        ]

    deadline = time.monotonic() + timeout / 2
    for t in commit_threads():
        threading.Thread.join(t, max(0.0, deadline - time.monotonic()))
    left = commit_threads()
    for t in left:
        t.cancel()
    deadline = time.monotonic() + timeout / 2
    for t in left:
        threading.Thread.join(t, max(0.0, deadline - time.monotonic()))


def _atomic_write(path: epath.Path, text: str) -> None:
    """Writes through a temporary file and a rename, so readers see the old or the new file, never half."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def _parse_json(value: Any, name: str) -> Any:
    """``value`` round-tripped through JSON, so a bad value fails here rather than in a save thread."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"Checkpointer: {name} must be JSON-serialisable: {e}") from e


def _parse_config(config: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, str):
        try:
            parsed = json.loads(config)
        except ValueError as e:
            raise ValueError(f"Checkpointer: config_json is not valid JSON: {e}") from e
    else:
        parsed = _parse_json(dict(config), "config_json")
    if not isinstance(parsed, dict):
        raise ValueError(f"Checkpointer: config_json must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:300] + "..."


__all__: Sequence[str] = (
    "CheckpointSaveError",
    "Checkpointer",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "NoCheckpointError",
    "NonFiniteStateError",
    "abstract_from_shardings",
    "abstract_like",
)
