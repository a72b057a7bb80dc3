"""machine_info: what a timing was measured on."""

import json

import pytest

import retro.machine
from retro.machine import ISA_FLAGS, cpu_has_native_bf16, load_average, machine_info


def test_machine_info_is_json_with_the_cpu_and_its_load():
    info = json.loads(json.dumps(machine_info()))
    assert info["cpu"] and info["arch"] and info["simd"] and info["bf16_kernel"]
    assert set(info["isa"]) <= set(ISA_FLAGS)
    assert 1 <= info["usable_cores"] <= info["cores"]
    assert len(info["load_before"]) == 3 and all(x >= 0 for x in info["load_before"])
    assert len(load_average()) == 3


@pytest.mark.parametrize("flags, native", [(["avx2", "avx512f"], False),
                                           (["avx2", "avx512f", "avx512_bf16"], True),
                                           (["avx2", "amx_tile", "amx_bf16"], True)])
def test_native_bf16_is_avx512_bf16_or_amx(monkeypatch, flags, native):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(retro.machine, "isa_flags", lambda: flags)
    assert cpu_has_native_bf16() == native
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # torch held at AVX2: bf16 is emulated
    assert not cpu_has_native_bf16()
