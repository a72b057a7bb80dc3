"""machine_info: what a timing was measured on."""

import json

from retro.machine import ISA_FLAGS, load_average, machine_info


def test_machine_info_is_json_with_the_cpu_and_its_load():
    info = json.loads(json.dumps(machine_info()))
    assert info["cpu"] and info["arch"] and info["simd"] and info["bf16_kernel"]
    assert set(info["isa"]) <= set(ISA_FLAGS)
    assert 1 <= info["usable_cores"] <= info["cores"]
    assert len(info["load_before"]) == 3 and all(x >= 0 for x in info["load_before"])
    assert len(load_average()) == 3
