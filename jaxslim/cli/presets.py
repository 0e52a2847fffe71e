"""Finds and loads training presets: ``configs/<name>.py`` files with ``get_config(arg) -> TrainConfig``.

A preset is named ``name`` or ``name:arg`` (``shakespeare_gpt:tiny``), or given as a path to a
Python file (``my/presets/run.py:arg``, ``./configs/x.py``). Names are looked up, in order, in the
folders of ``$JAXSLIM_CONFIGS`` (``os.pathsep``-separated, set by the user), the ``configs/`` folder
of a source checkout, and the copy of ``configs/`` shipped inside the wheel (``jaxslim/_configs``).

A preset is Python code, so a file is executed only when the user names it: the current
directory's ``./configs`` is never searched for a name (a folder someone else wrote could shadow a
packaged preset there). When it holds a file of the same name, a warning names both files and the
packaged one is used; pass the path to run the local one.

Example:
    >>> cfg = load_preset("shakespeare_gpt:tiny")
    >>> cfg.model.arch
    'gpt2'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import sys

from jaxslim.config import TrainConfig

log = logging.getLogger(__name__)


class PresetError(ValueError):
    """An unknown preset, a preset file that fails to load, or one that returns no TrainConfig."""


def preset_dirs() -> list[pathlib.Path]:
    """The folders searched for preset names, in order (only those that exist)."""
    package = pathlib.Path(__file__).resolve().parents[1]
    dirs = [pathlib.Path(p) for p in os.environ.get("JAXSLIM_CONFIGS", "").split(os.pathsep) if p]
    dirs += [package.parent / "configs", package / "_configs"]
    seen: list[pathlib.Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def available_presets() -> list[str]:
    """Names of every preset found in :func:`preset_dirs`."""
    names = {p.stem for d in preset_dirs() for p in d.glob("*.py") if not p.name.startswith("_")}
    return sorted(names)


def _find(name: str) -> pathlib.Path:
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = pathlib.Path(name)
        if not path.is_file():
            raise PresetError(f"preset file {name} does not exist")
        return path
    for d in preset_dirs():
        path = d / f"{name}.py"
        if path.is_file():
            local = pathlib.Path.cwd() / "configs" / f"{name}.py"
            if local.is_file() and local.resolve() != path.resolve():
                log.warning(
                    "preset %r is %s; the file %s of the same name is not run (give its path to run it)",
                    name,
                    path,
                    local,
                )
            return path
    raise PresetError(
        f"unknown preset {name!r}; available presets: {', '.join(available_presets()) or 'none'} "
        f"(searched {', '.join(str(d) for d in preset_dirs()) or 'no configs folder'})"
    )


def load_preset(spec: str) -> TrainConfig:
    """The ``TrainConfig`` of preset ``spec`` (``name``, ``name:arg``, ``path.py`` or ``path.py:arg``).

    Raises:
        PresetError: the preset is not found, its file fails to import, it has no ``get_config``, or
            ``get_config`` rejects ``arg`` or returns something other than a ``TrainConfig``.
    """
    name, _, arg = spec.partition(":")
    path = _find(name)
    module_name = f"jaxslim_preset_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise PresetError(f"preset file {path} cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise PresetError(f"preset file {path} failed to import: {type(e).__name__}: {e}") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise PresetError(f"preset file {path} has no get_config(arg) function")
    try:
        cfg = get_config(arg)
    except ValueError as e:
        raise PresetError(f"preset {name!r} rejected argument {arg!r}: {e}") from e
    if not isinstance(cfg, TrainConfig):
        raise PresetError(
            f"get_config of preset {path} returned {type(cfg).__name__}, expected a TrainConfig"
        )
    return cfg


def preset_options(arg: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """A preset argument of comma-separated options: ``"tiny,experts=4"`` -> ``{"tiny": "",
    "experts": "4"}``.

    Raises:
        ValueError: an option not in ``allowed``.
    """
    out = {}
    for part in filter(None, arg.split(",")):
        key, _, value = part.partition("=")
        if key not in allowed:
            raise ValueError(f"preset option {key!r} is not one of {allowed}")
        out[key] = value
    return out
