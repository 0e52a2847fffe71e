"""``jaxslim-train`` (and ``python -m train.lm``): train a preset, with command-line overrides.

Usage::

    jaxslim-train [PRESET[:ARG]] [--field.sub-field VALUE ...]
    jaxslim-train shakespeare_gpt --optim.lr 3e-4 --steps 2000 --workdir runs/a
    jaxslim-train shakespeare_gpt:tiny --help     # every field, its type and its preset value

``PRESET`` is a name in ``configs/`` (default ``shakespeare_gpt``) or a path to a preset file; see
:mod:`jaxslim.cli.presets`. Running the same command again resumes from the run directory's
latest checkpoint. Exit status: 0 on success, 1 when training fails (non-finite loss), 2 on bad
input or environment (unknown preset, a bad override, an incompatible checkpoint, a missing
corpus, a checkpoint that could not be saved, a filesystem error).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from jaxslim.cli.presets import PresetError, load_preset
from jaxslim.config import TrainConfig

DEFAULT_PRESET = "shakespeare_gpt"


def parse(argv: Sequence[str]) -> TrainConfig:
    """The config of ``argv``: an optional preset first, then tyro overrides of any field.

    Raises:
        PresetError: an unknown or broken preset.
        SystemExit: tyro rejected an override (after printing which and why), or ``--help``.
    """
    import tyro

    argv = list(argv)
    spec = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_PRESET
    default = load_preset(spec)
    return tyro.cli(
        TrainConfig,
        default=default,
        args=argv,
        prog=f"jaxslim-train {spec}",
        description=f"Train preset {spec!r}; every flag overrides one field of its TrainConfig.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from jaxslim.checkpoint import CheckpointSaveError, CorruptCheckpointError, IncompatibleCheckpointError
    from jaxslim.data import CorpusError
    from jaxslim.training import NonFiniteLossError, RunDirectoryError, train

    level = os.environ.get("JAXSLIM_LOG", "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if logging.getLevelName(level) != logging.DEBUG:
        # Orbax logs a failed background save with tracebacks from each of its threads; the run
        # reports the failure itself, in one line (JAXSLIM_LOG=DEBUG shows Orbax's account).
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        cfg = parse(sys.argv[1:] if argv is None else argv)
    except (PresetError, ValueError) as e:
        print(f"jaxslim-train: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # tyro printed the help, or which override is wrong and why
        return e.code if isinstance(e.code, int) else 2
    try:
        train(cfg)
    except (
        IncompatibleCheckpointError,
        CorruptCheckpointError,
        CheckpointSaveError,
        RunDirectoryError,
        CorpusError,
        OSError,
        ValueError,
    ) as e:
        print(f"jaxslim-train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"jaxslim-train: training stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
