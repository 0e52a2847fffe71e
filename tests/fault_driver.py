"""Runs ``jaxslim-train`` with a checkpoint save that fails in Orbax's background threads.

Fault injection for the tests of failed saves: ``python tests/fault_driver.py PHASE STEP ARGS...``
patches Orbax so that every save of a step >= ``STEP`` fails in ``PHASE``, then runs
``jaxslim.cli.train.main(ARGS)`` and exits with its status. Phases:

- ``serialize``: writing an item's files (the commit futures of the JSON handler) raises ``OSError``;
- ``commit``: the final rename of the temporary step directory raises ``OSError``.

Both run after :meth:`Checkpointer.save` has returned, in Orbax's background threads, like a full
disk or a lost mount would.
"""

from __future__ import annotations

import errno
import re
import sys

from orbax.checkpoint._src.handlers import json_checkpoint_handler
from orbax.checkpoint._src.path import atomicity

_STEP = re.compile(r"^(\d+)")


def _step_of(name: str) -> int | None:
    m = _STEP.match(name)
    return None if m is None else int(m.group(1))


def install(phase: str, first_bad_step: int) -> None:
    """Patches Orbax so that saves of steps >= ``first_bad_step`` fail in ``phase``."""

    def bad(step: int | None) -> bool:
        return step is not None and step >= first_bad_step

    if phase == "serialize":
        original = json_checkpoint_handler.JsonCheckpointHandler._save_fn

        async def failing_save_fn(self, x, directory):
            if bad(_step_of(directory.parent.name)):
                raise OSError(errno.ENOSPC, "No space left on device (injected)", str(directory))
            return await original(self, x, directory)

        json_checkpoint_handler.JsonCheckpointHandler._save_fn = failing_save_fn
    elif phase == "commit":
        original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def failing_finalize(self):
            if bad(_step_of(self._final_path.name)):
                raise OSError(errno.EIO, "Input/output error (injected)", str(self._final_path))
            return await original_finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = failing_finalize
    else:
        raise ValueError(f"unknown phase {phase!r}; expected 'serialize' or 'commit'")


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    from jaxslim.cli.train import main

    sys.exit(main(sys.argv[3:]))
