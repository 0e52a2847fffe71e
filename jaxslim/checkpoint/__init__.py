"""Checkpoints of the full training state: async Orbax saves, retention, resume, resharding restore,
and ExCP-style compressed checkpoints that training resumes from.

The Orbax API is used in one module only (:mod:`jaxslim.checkpoint.manager`), so an Orbax API change
touches one file. See :class:`Checkpointer` for the on-disk layout and the guarantees, and
:class:`CompressedCheckpointer` (:mod:`~jaxslim.checkpoint.compressed`) with its codec
(:mod:`~jaxslim.checkpoint.codec`: residual, weight-momentum shrinking, k-means codes, lossless mode).

Example:
    >>> import jax.numpy as jnp, tempfile
    >>> from jaxslim.checkpoint import Checkpointer, abstract_like
    >>> state = {"w": jnp.ones((2, 2))}
    >>> with Checkpointer(tempfile.mkdtemp(), async_save=False) as ckpt:
    ...     _ = ckpt.save(1, state)
    ...     restored, extra = ckpt.restore(abstract_like(state))
    >>> bool((restored["w"] == state["w"]).all())
    True
"""

from jaxslim.checkpoint.codec import Codec
from jaxslim.checkpoint.compressed import (
    CompressedCheckpointer,
    MissingReferenceError,
    checkpointer_from_config,
)
from jaxslim.checkpoint.manager import (
    Checkpointer,
    CheckpointSaveError,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    NoCheckpointError,
    NonFiniteStateError,
    abstract_from_shardings,
    abstract_like,
)
from jaxslim.config import CodecConfig

__all__ = [
    "CheckpointSaveError",
    "Checkpointer",
    "Codec",
    "CodecConfig",
    "CompressedCheckpointer",
    "MissingReferenceError",
    "checkpointer_from_config",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "NoCheckpointError",
    "NonFiniteStateError",
    "abstract_from_shardings",
    "abstract_like",
]
