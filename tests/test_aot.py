"""The real train step compiled ahead of time for a TPU topology (``jaxslim-aot``) with libtpu, no
TPU attached: it fits, and FSDP communicates like FSDP (gradients reduce-scattered, no all-reduce
of a weight-sized buffer).

libtpu lives in ``.venv-aot`` (``make aot``) unless this interpreter has it; the compile runs in a
subprocess of that environment. Locally the test skips without either; under CI
(``JAXSLIM_REQUIRE_ALL=1``) it fails instead.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

import jaxslim
from conftest import REQUIRE_ALL

REPO = pathlib.Path(jaxslim.__file__).resolve().parents[1]


def aot_python() -> str:
    if importlib.util.find_spec("libtpu") is not None:
        return sys.executable
    venv = REPO / ".venv-aot" / "bin" / "python"
    if venv.exists():
        return str(venv)
    message = "libtpu is not installed here or in .venv-aot (run `make aot`)"
    if REQUIRE_ALL:
        pytest.fail(message)
    pytest.skip(message)


def run_aot(tmp_path: pathlib.Path, *args: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    out = tmp_path / "aot"
    proc = subprocess.run(
        [aot_python(), "-m", "jaxslim.cli.aot", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"jaxslim-aot exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert "fits" in proc.stdout
    return json.loads((out / "aot.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh",
    [("--mesh.data", "1", "--mesh.fsdp", "-1"), ("--mesh.data", "2", "--mesh.fsdp", "-1")],
    ids=["fsdp4", "data2xfsdp2"],
)
def test_tiny_llama_train_step_compiles_for_v5e_2x2_and_reduce_scatters(tmp_path, mesh):
    report = run_aot(tmp_path, "llama2_7b:tiny", "--topology", "v5e:2x2", *mesh)
    assert report["chips"] == 4 and report["topology"] == "v5e:2x2"
    assert report["fits"] and 0 < report["memory"]["total"] < report["hbm_bytes"]
    assert report["weight_sized_all_reduces"] == []
    assert report["collectives"]["reduce-scatter"]["runs"] > 0
    assert report["estimate"]["step_s"] > 0 and 0 < report["estimate"]["mfu"] <= 1
    assert (tmp_path / "aot" / "executable.bin").stat().st_size > 0
    assert "S(5)" not in (tmp_path / "aot" / "hlo.txt").read_text()  # nothing in host memory


@pytest.mark.slow
def test_offload_policy_puts_activations_in_host_memory(tmp_path):
    """The ``offload`` remat policy keeps each block's input and projections in the TPU host's
    memory space (``S(5)`` in the compiled HLO); the other policies keep everything in HBM."""
    report = run_aot(tmp_path, "llama2_7b:tiny", "--topology", "v5e:2x2", "--model.remat-policy", "offload")
    assert report["fits"]
    assert "S(5)" in (tmp_path / "aot" / "hlo.txt").read_text()


@pytest.mark.slow
def test_llama2_7b_layers_on_a_v5e_256_pod_reduce_scatter_every_gradient(tmp_path):
    """Two full-width Llama-2-7B layers (a small vocabulary keeps the compile short) on all 256
    chips of a v5e-256 with the preset's mesh: no weight gradient, the embedding table's included,
    is all-reduced whole. Four chips cannot show this: which collective the compiler picks depends
    on the axis sizes."""
    report = run_aot(
        tmp_path, "llama2_7b", "--topology", "v5e-256", "--model.n-layers", "2", "--model.vocab-size", "2048"
    )
    assert report["chips"] == 256 and report["mesh"]["fsdp"] == 128
    assert report["weight_sized_all_reduces"] == []
    assert report["collectives"]["reduce-scatter"]["runs"] > 0


@pytest.mark.slow
def test_tiny_mixtral_compiles_for_v5p_with_experts_over_their_own_axis(tmp_path):
    report = run_aot(tmp_path, "mixtral_8x7b:tiny", "--topology", "v5p:2x2x1")
    assert report["mesh"] == {"data": 1, "fsdp": 2, "context": 1, "tensor": 1, "expert": 2}
    assert report["fits"] and 0 < report["memory"]["total"] < report["hbm_bytes"]
    # tokens travel to the chips that hold their experts
    assert report["collectives"]["all-to-all"]["runs"] > 0


MESHES = """
from jaxslim.aot import parse_topology, topology_devices
from jaxslim.config import MeshConfig
from jaxslim.sharding import make_mesh
for spec, slices, cfg in [
    ("v5p-128", 1, MeshConfig(data=1, fsdp=-1, expert=8)),
    ("v5e-16", 2, MeshConfig(data=2, fsdp=-1)),
]:
    devices = topology_devices(parse_topology(spec, slices))
    mesh = make_mesh(cfg, devices)
    print(spec, slices, dict(mesh.shape), sorted({getattr(d, "slice_index", 0) for d in mesh.devices[0].flat}))
"""


def test_pod_meshes_split_physical_axes_and_put_slices_on_data():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    proc = subprocess.run([aot_python(), "-c", MESHES], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # expert=8 on a 4x4x4 torus splits a physical axis of 4 (jax.make_mesh alone refuses)
    assert lines[0] == "v5p-128 1 {'data': 1, 'fsdp': 8, 'context': 1, 'tensor': 1, 'expert': 8} [0]"
    # two v5e-16 slices: each data index is one slice
    assert lines[1] == "v5e-16 2 {'data': 2, 'fsdp': 16, 'context': 1, 'tensor': 1, 'expert': 1} [0]"
