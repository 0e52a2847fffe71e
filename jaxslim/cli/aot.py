"""``jaxslim-aot``: compile a preset's train step for a TPU topology, no TPU needed, and report.

Usage::

    jaxslim-aot [PRESET[:ARG]] --topology v5e-256 [--slices N] [--out DIR] [--field.sub-field VALUE ...]
    jaxslim-aot llama2_7b --topology v5e-256
    jaxslim-aot gpt2_small --topology v5e:4x4 --data.batch-size 64 --model.remat-policy full

The preset and overrides are ``jaxslim-train``'s (:mod:`jaxslim.cli.train`); the step compiled is
the one it runs. ``--topology`` takes MaxText's names (``v5e-256``, ``v5p-128``, ``v4-32``,
``v6e-64``) or the compiler's (``v5e:16x16``); without it, the step is compiled for the local devices
(on a machine with accelerators, those). Prints per-chip HBM against the chip's, the collectives per
step, the analytic FLOPs and a roofline estimate; ``--out DIR`` also writes ``aot.json`` and the
serialized executable (``executable.bin``) with its HLO (``hlo.txt``). Needs libtpu for TPU topologies:
``pip install 'jaxslim[aot]'`` (or ``make aot``). Exit status: 0 when the step fits, 1 when it does
not, 2 on bad input.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

from jaxslim.cli.errors import debug_requested, run_command

OWN_FLAGS = ("--topology", "--slices", "--out")


def split_own_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``(--topology / --slices / --out values, the remaining argv for the preset and overrides)``."""
    own: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in OWN_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            own[name[2:]] = value
        else:
            rest.append(arg)
        i += 1
    return own, rest


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jaxslim-aot``; returns 0 (fits), 1 (does not fit) or 2 (bad input or environment)."""
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))

    def body() -> int:
        from jaxslim.aot import compile_train_step, parse_topology
        from jaxslim.cli.train import parse

        own, rest = split_own_flags(argv)
        slices = own.get("slices", "1")
        if not slices.isdigit() or int(slices) < 1:
            raise ValueError(f"--slices must be an integer >= 1, got {slices!r}")
        topology = parse_topology(own["topology"], int(slices)) if "topology" in own else None
        if topology is None and int(slices) != 1:
            raise ValueError("--slices needs --topology")
        try:
            cfg = parse(rest)
        except SystemExit as e:  # tyro printed the help, or which override is wrong and why
            return e.code if isinstance(e.code, int) else 2
        report, compiled = compile_train_step(cfg, topology)
        print(report.format())
        if "out" in own:
            out = pathlib.Path(own["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / "aot.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
            if compiled is not None:
                from jax.experimental.serialize_executable import serialize

                payload, _, _ = serialize(compiled)
                (out / "executable.bin").write_bytes(payload)
                (out / "hlo.txt").write_text(compiled.as_text())
            print("wrote aot.json" + (", executable.bin and hlo.txt" if compiled else "") + f" to {out}")
        return 0 if report.fits else 1

    return run_command("jaxslim-aot", body, debug=debug, failures=())


if __name__ == "__main__":
    raise SystemExit(main())
