"""training.precision: auto chooses mixed_bfloat16 where the hardware has fast bfloat16."""

from pathlib import Path

import pytest

from siamese_reid.errors import ReIDError
from siamese_reid.precision import choose_precision, cpu_flags, cpu_model, resolve_precision

# /proc/cpuinfo flag sets of real CPUs (abridged)
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
AMX_ONLY = {"avx2", "amx_bf16", "amx_tile"}
SKYLAKE = {"avx2", "avx512f", "avx512_vnni"}
HASWELL = {"avx", "avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "gpus", "policy"),
    [
        (SAPPHIRE_RAPIDS, [], "mixed_bfloat16"),
        (ZEN4, [], "mixed_bfloat16"),
        (AMX_ONLY, [], "mixed_bfloat16"),
        (SKYLAKE, [], "float32"),
        (HASWELL, [], "float32"),
        (set(), [], "float32"),  # flags unknown (no /proc/cpuinfo)
        (HASWELL, [(8, 0)], "mixed_bfloat16"),  # A100: the GPU trains, whatever the CPU
        (HASWELL, [(9, 0), (8, 6)], "mixed_bfloat16"),  # H100 + RTX 3090
        (SAPPHIRE_RAPIDS, [(7, 0)], "float32"),  # V100: no bfloat16 tensor cores
        (ZEN4, [(8, 0), (7, 5)], "float32"),  # one old GPU slows every replica
    ],
)
def test_auto_chooses_bfloat16_only_on_hardware_with_fast_bfloat16(flags, gpus, policy):
    chosen = choose_precision(flags, gpus)
    assert chosen.policy == policy
    assert chosen.reason  # recorded in run_info.json


def test_reasons_name_what_decided():
    assert "avx512_bf16" in choose_precision(ZEN4, []).reason
    assert "amx_bf16" in choose_precision(AMX_ONLY, []).reason
    assert "7.0" in choose_precision(SAPPHIRE_RAPIDS, [(7, 0)]).reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_the_cpu_model_names_its_generation_where_the_name_does_not(tmp_path):
    # a virtual machine's Zen 4 calls itself "AMD EPYC"; family 25, model 17 tells which
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n\n"
        "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Other\n"
    )
    assert cpu_model(cpuinfo) == "AMD EPYC (cpu family 25, model 17)"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\nHardware\t: Some board\n")
    assert cpu_model(arm) == "Some board" and cpu_flags(arm) == {"fp", "asimd"}
    assert cpu_model(tmp_path / "missing")  # the platform's name, never empty


def test_auto_on_this_machine_follows_its_cpuinfo():
    # read /proc/cpuinfo here independently: this project's machines report avx512_bf16 (an
    # AMD EPYC without AMX on some, an Intel CPU with AMX on others), so auto must choose
    # mixed_bfloat16 there (no GPU)
    path = Path("/proc/cpuinfo")
    if not path.exists():
        pytest.skip("no /proc/cpuinfo")
    flags_line = next(line for line in path.read_text().splitlines() if line.startswith("flags"))
    fast = {"amx_bf16", "avx512_bf16"} & set(flags_line.split())
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU decides")
    chosen = resolve_precision("auto")
    assert chosen.policy == ("mixed_bfloat16" if fast else "float32"), chosen


def test_explicit_policies_pass_through():
    assert resolve_precision("mixed_float16").policy == "mixed_float16"
    assert resolve_precision("float32").reason == "set in the config"
    with pytest.raises(ReIDError, match="valid names"):
        resolve_precision("float8")
