"""``jaxslim-train`` (and ``python -m train.lm``): train a preset, with command-line overrides.

Usage::

    jaxslim-train [PRESET[:ARG]] [--field.sub-field VALUE ...]
    jaxslim-train shakespeare_gpt --optim.lr 3e-4 --steps 2000 --workdir runs/a
    jaxslim-train shakespeare_gpt:tiny --help     # every field, its type and its preset value
    jaxslim-train shakespeare_gpt --checkpoint.compression excp --checkpoint.weight-bits 4

``--checkpoint.compression {none,excp,lossless}`` and ``--checkpoint.<codec field>`` are short for
tyro's ``checkpoint.codec:none`` / ``checkpoint.codec:codec-config --checkpoint.codec.<field>``.

``PRESET`` is a name in ``configs/`` (default ``shakespeare_gpt``) or a path to a preset file; see
:mod:`jaxslim.cli.presets`. Running the same command again resumes from the run directory's
latest checkpoint. Exit status (:mod:`jaxslim.cli.errors`): 0 on success, 1 when training fails
(non-finite loss), 2 on bad input or environment (unknown preset, a bad override, an incompatible
checkpoint, a missing corpus, a run directory in use or not a run, a checkpoint that could not be
saved, a filesystem error), with a one-line message; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from jaxslim.cli.errors import debug_requested, run_command
from jaxslim.cli.presets import load_preset
from jaxslim.config import CodecConfig, TrainConfig

DEFAULT_PRESET = "shakespeare_gpt"


def parse(argv: Sequence[str]) -> TrainConfig:
    """The config of ``argv``: an optional preset first, then tyro overrides of any field.

    Raises:
        PresetError: an unknown or broken preset.
        ValueError: a stage of a staged run does not fit the model.
        SystemExit: tyro rejected an override (after printing which and why), or ``--help``.
    """
    import tyro

    argv = list(argv)
    spec = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_PRESET
    default = load_preset(spec)
    cfg = tyro.cli(
        TrainConfig,
        default=default,
        args=codec_aliases(argv),
        prog=f"jaxslim-train {spec}",
        description=f"Train preset {spec!r}; every flag overrides one field of its TrainConfig.",
    )
    if cfg.stages:  # whether every stage fits the model is for the growth operators to say
        from jaxslim.grow.stages import start_model

        start_model(cfg.model, cfg.stages)
    return cfg


def codec_aliases(argv: Sequence[str]) -> list[str]:
    """``argv`` with the flat codec flags spelled as tyro's ``checkpoint.codec`` subcommand.

    ``--checkpoint.compression MODE`` selects ``checkpoint.codec:none`` (MODE ``none``) or
    ``checkpoint.codec:codec-config --checkpoint.codec.mode MODE``; ``--checkpoint.<field>`` of a
    :class:`~jaxslim.config.CodecConfig` field becomes ``--checkpoint.codec.<field>``. Subcommands go
    after every other flag, as tyro wants.

    Example:
        >>> codec_aliases(["--steps", "5", "--checkpoint.compression=excp", "--checkpoint.weight-bits", "3"])
        ['--steps', '5', 'checkpoint.codec:codec-config', '--checkpoint.codec.mode', 'excp', '--checkpoint.codec.weight-bits', '3']
    """
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(CodecConfig)}
    # boolean fields are value-less flags: --checkpoint.residual-gain / --checkpoint.no-residual-gain
    switches = {f.name.replace("_", "-") for f in dataclasses.fields(CodecConfig) if f.type in (bool, "bool")}
    switches |= {f"no-{name}" for name in switches}
    rest: list[str] = []
    codec: list[str] = []
    mode = None
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        name = flag.removeprefix("--checkpoint.").replace("_", "-")
        if flag.startswith("--checkpoint.") and name in switches and not eq:
            codec.append(f"--checkpoint.codec.{name}")
            continue
        if not flag.startswith("--checkpoint.") or name not in fields | {"compression"}:
            rest.append(arg)
            continue
        value = value if eq else next(args, "")
        if name == "compression":
            mode = value
        else:
            codec += [f"--checkpoint.codec.{name}", value]
    if mode is None and not codec:
        return rest
    if mode == "none":
        return [*rest, "checkpoint.codec:none", *codec]
    return [
        *rest,
        "checkpoint.codec:codec-config",
        *(["--checkpoint.codec.mode", mode] if mode else []),
        *codec,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxslim-train`` with ``argv`` (``sys.argv[1:]`` by default); returns the exit status
    of :mod:`jaxslim.cli.errors` (0 done, 1 non-finite loss, 2 bad input or environment)."""
    from jaxslim.training import NonFiniteLossError, train

    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    level = os.environ.get("JAXSLIM_LOG", "DEBUG" if debug else "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if logging.getLevelName(level) != logging.DEBUG:
        # Orbax logs a failed background save with tracebacks from each of its threads; the run
        # reports the failure itself, in one line (--debug shows Orbax's account).
        logging.getLogger("absl").setLevel(logging.CRITICAL)

    def body() -> int:
        try:
            cfg = parse(argv)
        except SystemExit as e:  # tyro printed the help, or which override is wrong and why
            return e.code if isinstance(e.code, int) else 2
        train(cfg)
        return 0

    return run_command("jaxslim-train", body, debug=debug, failures=(NonFiniteLossError,))


if __name__ == "__main__":
    raise SystemExit(main())
