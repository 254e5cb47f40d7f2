"""The compute precision of a run: a Keras mixed-precision policy, or one chosen from the hardware.

bfloat16 has float32's range, so unlike float16 it needs no loss scaling: where the hardware
computes it natively, mixed_bfloat16 is a free speed-up (1.67x float32 training on this project's
AVX512_BF16 CPU, see docs/benchmarks.md); where it does not, it is emulated and slower than float32.
"""

import platform
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from siamese_reid.errors import ReIDError

# training.precision: the Keras mixed-precision policies offered, or "auto" (`choose_precision`)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")

# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic units (Intel AMX, AVX512_BF16 on Intel
# Cooper Lake and later and AMD Zen 4 and later); oneDNN uses them for bfloat16 matrix products.
FAST_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# NVIDIA Ampere (compute capability 8.0) and newer have bfloat16 tensor cores.
FAST_BFLOAT16_GPU_CAPABILITY = (8, 0)


class Precision(NamedTuple):
    """The Keras policy a run uses and why (recorded in run_info.json)."""

    policy: str
    reason: str


def choose_precision(cpu_flags, gpu_capabilities):
    """mixed_bfloat16 where the hardware that trains has fast bfloat16, else float32.

    Args:
      cpu_flags: the CPU's feature flags (as /proc/cpuinfo names them).
      gpu_capabilities: (major, minor) compute capability of every visible GPU; empty for none.
        With GPUs, they train: every one must be Ampere or newer (a replica without bfloat16
        units would set the pace of all).
    """
    if gpu_capabilities:
        names = ", ".join(f"{major}.{minor}" for major, minor in gpu_capabilities)
        if all(tuple(capability) >= FAST_BFLOAT16_GPU_CAPABILITY for capability in gpu_capabilities):
            return Precision("mixed_bfloat16", f"every GPU has bfloat16 tensor cores (compute capability {names})")
        return Precision("float32", f"not every GPU has bfloat16 tensor cores (compute capability {names} < 8.0)")
    found = [flag for flag in FAST_BFLOAT16_CPU_FLAGS if flag in set(cpu_flags)]
    if found:
        return Precision("mixed_bfloat16", f"no GPU; the CPU reports {', '.join(found)}")
    return Precision("float32", f"no GPU; the CPU reports none of {', '.join(FAST_BFLOAT16_CPU_FLAGS)}")


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's feature flags from /proc/cpuinfo (Linux; "Features" on ARM); empty where it
    does not exist."""
    fields = _first_processor(cpuinfo_path)
    return set(fields.get("flags", fields.get("Features", "")).split())


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's model name with its family and model numbers, which tell generations apart
    where a virtual machine's name does not ("AMD EPYC": Zen 4 is family 25, model 17); the
    platform's processor name where /proc/cpuinfo does not exist. Recorded in run_info.json,
    since a recipe's training time is its CPU's."""
    fields = _first_processor(cpuinfo_path)
    if not fields:
        return platform.processor() or platform.machine()
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
    name = fields.get("model name", fields.get("Hardware", "unknown CPU"))
    return f"{name} ({', '.join(numbers)})" if numbers else name


def _first_processor(cpuinfo_path):
    """The fields of /proc/cpuinfo's first processor, by name; empty where it cannot be read."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields.setdefault(key.strip(), value.strip())
    return fields


def gpu_capabilities():
    """(major, minor) compute capability of every GPU TensorFlow sees."""
    details = (tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU"))
    return [tuple(detail.get("compute_capability", (0, 0))) for detail in details]


def resolve_precision(name):
    """The `Precision` for `training.precision`: "auto" is decided from this machine's hardware."""
    if name not in PRECISIONS:
        raise ReIDError(f"unknown precision {name!r}; valid names: {list(PRECISIONS)}")
    if name == "auto":
        return choose_precision(cpu_flags(), gpu_capabilities())
    return Precision(name, "set in the config")
