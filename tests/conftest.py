import os
from pathlib import Path

import pytest

# tests never read or write the user's compile cache (subprocesses inherit this); the cache
# tests pass their own --compile_cache_dir
os.environ["MIND_DIFFUSION_COMPILE_CACHE"] = "off"

import mind_diffusion  # noqa: F401  (sets ONEDNN/GLOG defaults before mindspore loads)
import mindspore

ROOT = Path(__file__).resolve().parents[1]

# Pin the device once, before any kernel runs: set_device raises after the runtime started.
# MD_TEST_DEVICE=GPU (or Ascend) runs the suite's network tests on that device
# (bench/device_check.sh); tests that pin CPU themselves are CPU-only by design.
TEST_DEVICE = os.environ.get("MD_TEST_DEVICE", "CPU")
mindspore.set_device(TEST_DEVICE)

SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))


@pytest.fixture(params=["graph", "pynative"])
def ms_mode(request):
    """Run a test once in GRAPH_MODE and once in PYNATIVE_MODE on CPU."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def graph_mode():
    """Run a test in GRAPH_MODE (the scripts' default), then back to the default PYNATIVE_MODE."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def composed_attention():
    """Networks built inside the test use MindSpore's composed attention kernels (the path of the
    GPU and Ascend devices), not the fused CPU kernel (mind_diffusion/cpu_attention.py)."""
    from mind_diffusion import cpu_attention

    with cpu_attention.composed():
        yield


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (reference data lives beside the repo in CI)")
    return SHARED
