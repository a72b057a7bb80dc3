"""The build says whether it has CUDA kernels, and whether a GPU is usable now."""

import pytest

import retro
from retro import _core


def test_cuda_flags_are_booleans_and_consistent():
    assert isinstance(retro.has_cuda(), bool) and isinstance(retro.cuda_available(), bool)
    assert _core.cuda_device_count() >= 0
    assert retro.cuda_available() == (retro.has_cuda() and _core.cuda_device_count() > 0)
    if not retro.has_cuda():  # a CPU-only build: no device API beyond the count
        assert not retro.cuda_available() and _core.cuda_device_count() == 0
        assert not hasattr(_core, "cuda_device_name")


@pytest.mark.gpu
@pytest.mark.skipif(not retro.cuda_available(), reason="needs a CUDA build and a usable GPU")
def test_cuda_device_name_and_cutlass_version():
    name = _core.cuda_device_name(0)
    assert isinstance(name, str) and "(sm_" in name  # e.g. "NVIDIA H100 80GB HBM3 (sm_90)"
    assert _core.cutlass_version()
