"""The machine fingerprint: precise enough to tell two 2-core cloud machines apart."""

from dataclasses import replace

from ccnbench import environment
from ccnbench.environment import Environment, cpu_fingerprint, differences, known_machine, machine_id

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 8
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16
"""


def _env(cpuinfo: str, model_name: str, **changes) -> Environment:
    env = replace(environment.collect(threads=1), cpu=model_name, **cpu_fingerprint(cpuinfo))
    env = replace(env, **changes)
    return replace(env, machine_id=machine_id(env))


def test_cpuinfo_gives_vendor_numbers_and_the_isa_flags_that_matter():
    xeon = cpu_fingerprint(XEON)
    assert (xeon["cpu_vendor"], xeon["cpu_family"], xeon["cpu_model_number"], xeon["cpu_stepping"]) == (
        "GenuineIntel", "6", "143", "8",
    )  # fmt: skip
    assert {"avx512_bf16", "amx_bf16", "amx_tile"} <= set(xeon["cpu_flags"]) and "fpu" not in xeon[
        "cpu_flags"
    ]
    assert "amx_bf16" not in cpu_fingerprint(EPYC)["cpu_flags"]


def test_two_machines_differ_and_one_machine_matches_itself():
    xeon, epyc = _env(XEON, "Intel(R) Xeon(R) Processor"), _env(EPYC, "AMD EPYC")
    assert xeon.machine_id != epyc.machine_id and len(xeon.machine_id) == 12
    assert differences(xeon, replace(xeon, command="another command", git_commit="abc")) == []
    reasons = differences(xeon, epyc)
    assert any(r.startswith("cpu_vendor: GenuineIntel -> AuthenticAMD") for r in reasons)
    assert any(r.startswith("cpu_flags:") for r in reasons)
    # Same CPU model name, another stepping: still another machine.
    stepped = _env(XEON, "Intel(R) Xeon(R) Processor", cpu_stepping="6")
    assert stepped.machine_id != xeon.machine_id and differences(xeon, stepped) == ["cpu_stepping: 8 -> 6"]


def test_software_versions_are_part_of_like_with_like():
    xeon = _env(XEON, "Intel(R) Xeon(R) Processor")
    assert differences(xeon, replace(xeon, onnxruntime="1.99.0")) == [
        f"onnxruntime: {xeon.onnxruntime} -> 1.99.0"
    ]
    assert differences(xeon, replace(xeon, openvino="2030.1")) != []


def test_a_run_without_the_fields_is_an_unknown_machine():
    old = {k: v for k, v in _env(EPYC, "AMD EPYC").to_dict().items()}
    for name in (
        "openvino",
        "cpu_vendor",
        "cpu_family",
        "cpu_model_number",
        "cpu_stepping",
        "cpu_flags",
        "machine_id",
    ):
        del old[name]
    legacy = Environment.from_dict(old)
    assert not known_machine(legacy)
    reasons = differences(legacy, legacy)
    assert reasons == [
        "base run: unknown machine (recorded before machine fingerprints)",
        "new run: unknown machine (recorded before machine fingerprints)",
    ]


def test_this_machine_has_a_fingerprint():
    env = environment.collect(threads=1)
    assert known_machine(env) and env.machine_id == machine_id(env)
    assert Environment.from_dict(env.to_dict()) == env
