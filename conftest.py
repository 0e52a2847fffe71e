"""Setup shared by the tests and the docstring examples: 8 fake CPU devices, a persistent compile
cache, offline Hugging Face, and compiled programs released after each module.

The device flags must be set before JAX initialises its backend, so this runs before any test module
or any ``jaxslim`` module collected for its examples (``--doctest-modules``) imports jax.
"""

import gc
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

_MAX_MAPS = 40_000  # per test module; the default vm.max_map_count is 65,530


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
    """Frees each test module's compiled programs once it is done.

    Every CPU executable XLA loads keeps its own memory mappings, and JAX's caches keep the
    executables alive for the life of the process; a suite of this size would otherwise pass the
    kernel's per-process limit (``vm.max_map_count``, 65,530 by default) and XLA would crash with a
    segmentation fault while compiling or loading the next program."""
    yield
    maps = pathlib.Path("/proc/self/maps")
    count = len(maps.read_bytes().splitlines()) if maps.exists() else 0
    jax.clear_caches()
    gc.collect()
    if count > _MAX_MAPS:
        raise RuntimeError(
            f"this test module left {count} memory mappings (the kernel's limit is about 65,530): "
            "split it, or release its programs sooner with jax.clear_caches()"
        )
