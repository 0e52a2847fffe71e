"""``jaxslim-ckpt``: compress, decompress and inspect the Orbax checkpoints of jaxslim runs.

    jaxslim-ckpt compress runs/shakespeare_gpt/checkpoints runs/gpt_excp --mode excp --weight-bits 4
    jaxslim-ckpt inspect runs/gpt_excp
    jaxslim-ckpt decompress runs/gpt_excp runs/gpt_plain

``compress`` reads every step of a plain checkpoint directory (as written by ``jaxslim-train``) in
order and writes them as a keyframe / residual chain, printing bytes, ratio, kept fractions and the
reconstruction error per step. ``decompress`` writes the reconstructed states back as plain Orbax
checkpoints that ``jaxslim-train`` resumes from. ``inspect`` prints a directory's steps (kind,
reference, bytes), the expected resume error of one step (weight error, Adam moments kept and the
error of the second-moment fill, and the loss change measured at the same settings) and its
per-tensor sparsity and error. None of them needs the model
code: trees are read in the layout Orbax stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import typing

from jaxslim.cli.errors import debug_requested, run_command
from jaxslim.config import CodecConfig
from jaxslim.paths import absolute, output_dir


def _bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _stacked_from_config(directory: pathlib.Path):
    """``(path, shape) -> bool`` for scanned stacks, from the run's saved config (if any)."""
    for candidate in (directory / "config.json", directory.parent / "config.json"):
        if candidate.is_file():
            try:
                model = json.loads(candidate.read_text()).get("model", {})
            except ValueError:
                continue
            if model.get("scan_layers"):
                n = model.get("n_layers")
                return lambda path, shape: "['stack']" in path and len(shape) >= 2 and shape[0] == n
            return lambda path, shape: False
    return None


def _codec_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`CodecConfig` field, with the field's choices or type and its default."""
    hints = typing.get_type_hints(CodecConfig)
    for f in dataclasses.fields(CodecConfig):
        flag, tp = "--" + f.name.replace("_", "-"), hints[f.name]
        if typing.get_origin(tp) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(tp), default=f.default)
        elif tp is bool:  # --residual-gain / --no-residual-gain
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=tp, default=f.default)


def _codec_args(args: argparse.Namespace) -> CodecConfig:
    return CodecConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CodecConfig)})


def compress(args) -> int:
    from jaxslim.checkpoint import Checkpointer, CompressedCheckpointer, NoCheckpointError

    src, dst = absolute(args.src), absolute(args.dst)
    codec = _codec_args(args)
    plain = Checkpointer(src, read_only=True)
    steps = plain.all_steps()
    if not steps:
        raise NoCheckpointError(f"{src} holds no checkpoint steps")
    print(
        f"compressing {len(steps)} steps of {src} -> {dst} ({codec.mode}, weights {codec.weight_bits} bits, "
        f"moments {codec.moment_bits} bits, keyframe every {codec.keyframe_every})"
    )
    print(f"{'step':>8} {'kind':>8} {'plain':>10} {'compressed':>11} {'ratio':>7} {'kept':>6} {'rel.err':>8}")
    total_plain = total_comp = 0
    # written beside dst and renamed into place when complete; a non-empty dst is refused
    with (
        output_dir(dst) as tmp,
        CompressedCheckpointer(
            tmp, codec, max_to_keep=None, async_save=False, stacked=_stacked_from_config(src)
        ) as out,
    ):
        for step in steps:
            state, extra = plain.restore_as_saved(step)
            out.save(step, state, extra=extra, force=True)
            meta = out.metadata(step)
            assert meta is not None  # a step just saved compressed
            pb, cb = _bytes(src / str(step)), _bytes(tmp / str(step))
            total_plain, total_comp = total_plain + pb, total_comp + cb
            w = [e["stats"] for e in meta["leaves"] if e["kind"] == "weight"]
            kept = f"{sum(s['kept'] for s in w) / len(w):.1%}" if w else "-"
            err = f"{max(s['rel_rms_error'] for s in w):.1e}" if w else "0"
            kind = "keyframe" if meta["keyframe"] else "delta"
            print(
                f"{step:>8} {kind:>8} {_human(pb):>10} {_human(cb):>11} {pb / cb:>6.1f}x {kept:>6} {err:>8}"
            )
    plain.close()
    print(f"total {_human(total_plain)} -> {_human(total_comp)}: {total_plain / total_comp:.1f}x")
    if args.verbose and meta is not None:  # the last step's; steps is not empty
        _tensor_table(meta)
    return 0


def decompress(args) -> int:
    from jaxslim.checkpoint import Checkpointer, CompressedCheckpointer, NoCheckpointError
    from jaxslim.checkpoint.compressed import numbered_tree

    src, dst = absolute(args.src), absolute(args.dst)
    comp = CompressedCheckpointer(src, CodecConfig(), read_only=True)
    have = comp.all_steps()
    if not have:
        raise NoCheckpointError(f"{src} holds no checkpoint steps; nothing was written")
    if args.step is not None and args.step not in have:
        raise NoCheckpointError(f"no checkpoint for step {args.step} in {src}; available steps: {have}")
    steps = have if args.step is None else [args.step]
    config = comp.config(steps[-1])
    with (
        output_dir(dst) as tmp,
        Checkpointer(tmp, max_to_keep=None, async_save=False, config_json=config) as out,
    ):
        for step in steps:
            leaves, extra, meta = comp.restore_leaves(step)
            state = numbered_tree(meta["tree"], leaves)
            out.save(step, state, extra=extra, force=True)
            print(f"step {step}: {_human(_bytes(src / str(step)))} -> {_human(_bytes(tmp / str(step)))}")
    comp.close()
    return 0


def _tensor_table(meta: dict) -> None:
    print(
        f"\n{'tensor':<70} {'shape':<18} {'kind':<7} {'kept':>6} {'m kept':>7} {'rel.err':>8} {'max err':>9} "
        f"{'v fill':>6}"
    )
    for e in meta["leaves"]:
        if e["kind"] == "raw" and not e["shape"]:
            continue
        s = e.get("stats", {})
        kept = f"{s['kept']:.1%}" if "kept" in s else "-"
        mk = f"{s['moments_kept']:.1%}" if "moments_kept" in s else "-"
        rel = f"{s['rel_rms_error']:.1e}" if "rel_rms_error" in s else ("0" if e["kind"] != "moment" else "-")
        mx = f"{s['max_error']:.1e}" if "max_error" in s else "-"
        fill = f"{s['v_fill_log2_rms']:.2f}" if "v_fill_log2_rms" in s else "-"
        print(
            f"{e['path'][:70]:<70} {str(tuple(e['shape'])):<18} {e['kind']:<7} {kept:>6} {mk:>7} {rel:>8} {mx:>9} "
            f"{fill:>6}"
        )


def inspect(args) -> int:
    from jaxslim.checkpoint import CompressedCheckpointer, NoCheckpointError
    from jaxslim.checkpoint.resume_cost import describe

    src = absolute(args.src)
    comp = CompressedCheckpointer(src, CodecConfig(), read_only=True)
    steps = comp.all_steps()
    if not steps:
        raise NoCheckpointError(f"{src} holds no checkpoint steps")
    print(
        f"{'step':>8} {'kind':>8} {'reference':>9} {'keyframe':>8} {'mode':>8} {'bits w/m':>8} {'size':>10}"
    )
    for step in steps:
        meta = comp.metadata(step)
        size = _human(_bytes(src / str(step)))
        if meta is None:
            print(f"{step:>8} {'plain':>8} {'-':>9} {'-':>8} {'-':>8} {'-':>8} {size:>10}")
            continue
        kind = "keyframe" if meta["keyframe"] else "delta"
        ref = "-" if meta["reference_step"] is None else meta["reference_step"]
        bits = f"{meta['bits']['weights']}/{meta['bits']['moments']}"
        print(
            f"{step:>8} {kind:>8} {ref!s:>9} {meta['keyframe_step']:>8} {meta['mode']:>8} {bits:>8} {size:>10}"
        )
    step = args.step if args.step is not None else steps[-1]
    meta = comp.metadata(step)
    if meta is not None:
        print(f"\nstep {step}: restore chain {comp.chain(step)}, alpha {meta['alpha']}, beta {meta['beta']}")
        print("\n".join(describe(meta)))
        _tensor_table(meta)
    comp.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxslim-ckpt", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress a plain checkpoint directory into a new one")
    c.add_argument("src", type=absolute)
    c.add_argument("dst", type=absolute)
    _codec_flags(c)
    c.add_argument("-v", "--verbose", action="store_true", help="per-tensor table of the last step")
    d = sub.add_parser("decompress", help="write plain Orbax checkpoints from a compressed directory")
    d.add_argument("src", type=absolute)
    d.add_argument("dst", type=absolute)
    d.add_argument("--step", type=int, default=None, help="only this step (default: all)")
    i = sub.add_parser("inspect", help="steps, sizes and per-tensor statistics of a compressed directory")
    i.add_argument("src", type=absolute)
    i.add_argument("--step", type=int, default=None, help="the step to detail (default: the latest)")
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    command = {"compress": compress, "decompress": decompress, "inspect": inspect}[args.command]
    return run_command("jaxslim-ckpt", lambda: command(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
