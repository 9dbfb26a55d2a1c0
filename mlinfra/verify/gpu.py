"""The gpu check: run ``nvidia-smi`` on a node, prove the GPUs the stack asked for are there
and healthy, and explain the known ways it fails.

The query is the CSV interface (``--query-gpu ... --format=csv,noheader,nounits``): one row per
GPU, values separated by ", ". Facts, real outputs and failure texts behind this module:
``../shared/reference/verification-anchors.md`` section C; recorded fixtures with their sources:
``tests/data/nvidia-smi/``.

How the command reaches the node is a *runner*: ``LocalRunner`` here (local target) or
``mlinfra.verify.ssh.SshRunner`` (GCP). Both run an argv with a timeout, because a wedged
driver makes nvidia-smi hang instead of fail (kubernetes/node-problem-detector#833).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from mlinfra.errors import CommandTimedOut, MlinfraError, ParseError, RunnerError  # noqa: F401 (re-exported)
from mlinfra.verify.result import CheckResult
from mlinfra.verify.runners import LocalRunner, Runner, RunResult, run_argv  # noqa: F401 (re-exported)

# Field names as `nvidia-smi --help-query-gpu` spells them (reference C1).
QUERY_FIELDS = (
    "index",
    "name",
    "uuid",
    "driver_version",
    "memory.total",
    "memory.used",
    "temperature.gpu",
    "utilization.gpu",
    "ecc.errors.uncorrected.volatile.total",
    "pstate",
)
COMMAND = ("nvidia-smi", f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits")

# What nvidia-smi prints when a value is unsupported or unknown (reference C1). These are
# *unknown*, never 0: a GeForce's "[N/A]" ECC count is not a clean ECC record.
UNAVAILABLE = frozenset({"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", ""})

# GCP accelerator type -> the product names nvidia-smi prints for it. Sources: the driver's
# own name table (NVIDIA/open-gpu-kernel-modules src/nvidia/generated/g_nv_name_released.h,
# which holds A100-SXM4-40GB, A100-PCIE-40GB, A100-SXM4-80GB, "A100 80GB PCIe", "H100 80GB
# HBM3", "H100 PCIe", L4, Tesla V100-SXM2-16GB, Tesla P100-PCIE-16GB); recorded outputs in
# the reference (Tesla T4, A100-SXM4-80GB, A100-PCIE-40GB, H100 80GB HBM3); public nvidia-smi
# output for the rest (Tesla P4 `-L`, "NVIDIA H200", "NVIDIA B200", "NVIDIA RTX PRO 6000
# Blackwell Server Edition"), less authoritative: record a real one when you can.
# The first name is what GCP attaches; later names are the same GPU and memory in another form
# factor, so a local-target workstation with a PCIe card passes too. "NVIDIA H100 NVL" is *not*
# an H100 80GB (it has 94 GB): it fails the model check on purpose.
NVIDIA_SMI_NAMES: dict[str, tuple[str, ...]] = {
    "nvidia-tesla-t4": ("Tesla T4",),
    "nvidia-tesla-p4": ("Tesla P4",),
    "nvidia-tesla-p100": ("Tesla P100-PCIE-16GB", "Tesla P100-SXM2-16GB"),
    "nvidia-tesla-v100": ("Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB"),
    "nvidia-l4": ("NVIDIA L4",),
    "nvidia-tesla-a100": ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
    "nvidia-a100-80gb": ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"),
    "nvidia-h100-mega-80gb": ("NVIDIA H100 80GB HBM3",),
    "nvidia-h200-141gb": ("NVIDIA H200",),
    "nvidia-b200": ("NVIDIA B200",),
    "nvidia-rtx-pro-6000": ("NVIDIA RTX PRO 6000 Blackwell Server Edition",),
}


def _normal(name: str) -> str:
    # Older drivers print "A100-SXM4-40GB" where newer ones print "NVIDIA A100-SXM4-40GB".
    name = " ".join(name.split()).casefold()
    return name.removeprefix("nvidia ")


def model_matches(gcp_name: str, smi_name: str | None) -> bool:
    return smi_name is not None and _normal(smi_name) in {_normal(n) for n in NVIDIA_SMI_NAMES.get(gcp_name, ())}


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reported it; None means nvidia-smi did not know the value."""

    index: int | None = None
    name: str | None = None
    uuid: str | None = None
    driver_version: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    temperature_c: int | None = None
    utilization_pct: int | None = None
    ecc_uncorrected: int | None = None
    pstate: str | None = None


def _number(text: str) -> int:
    match = re.match(r"-?\d+(\.\d+)?", text)  # tolerate a unit left on ("81559 MiB")
    if not match:
        raise ValueError(text)
    return round(float(match.group()))


# query field -> (GpuInfo attribute, converter); fields outside this table are read and ignored.
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "index": ("index", _number),
    "name": ("name", str),
    "gpu_name": ("name", str),
    "uuid": ("uuid", str),
    "gpu_uuid": ("uuid", str),
    "driver_version": ("driver_version", str),
    "memory.total": ("memory_total_mib", _number),
    "memory.used": ("memory_used_mib", _number),
    "temperature.gpu": ("temperature_c", _number),
    "utilization.gpu": ("utilization_pct", _number),
    "ecc.errors.uncorrected.volatile.total": ("ecc_uncorrected", _number),
    "pstate": ("pstate", str),
}


def parse(stdout: str, fields: tuple[str, ...] = QUERY_FIELDS) -> list[GpuInfo]:
    """Parse ``--format=csv,noheader,nounits`` output for ``fields``, one GpuInfo per row."""
    gpus = []
    for number, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        # nvidia-smi separates values with ", ". Names hold spaces ("NVIDIA H100 80GB HBM3"),
        # so splitting on whitespace mis-assigns every column after the name (Ricks-Lab/
        # gpu-utils#83); no product name in the driver's table holds a comma.
        values = [value.strip() for value in line.split(",")]
        if len(values) != len(fields):
            raise ParseError(
                f"line {number} of nvidia-smi output has {len(values)} values, "
                f"expected {len(fields)}: {line.strip()[:200]!r}"
            )
        row = {}
        for field_name, value in zip(fields, values, strict=True):
            if field_name not in _FIELDS or value in UNAVAILABLE:
                continue
            attribute, convert = _FIELDS[field_name]
            try:
                row[attribute] = convert(value)
            except ValueError:
                raise ParseError(f"line {number}: {field_name} is {value!r}, not a number") from None
        gpus.append(GpuInfo(**row))
    return gpus


# --- diagnosis -------------------------------------------------------------------------------


class Diagnosis(NamedTuple):
    label: str  # a few words for the report table
    cause: str
    fix: str

    def __str__(self) -> str:
        return f"{self.cause}. Fix: {self.fix}"


# (label, texts that identify it, return codes that identify it, cause, fix). Texts are the
# real ones from the reference (C3, C4); return codes from nvidia-smi(1) (C1). First match wins,
# so text matches (specific) come before code-only ones.
_KNOWN_FAILURES = (
    (
        "driver not loaded",
        ("couldn't communicate with the nvidia driver",),
        (9,),
        "the NVIDIA driver is not loaded: nvidia-smi could not talk to the kernel module",
        "usually a kernel upgrade without a driver module built for it: reinstall the driver for "
        "the running kernel (DKMS) or boot the kernel it was built for, then reboot",
    ),
    (
        "driver/library mismatch",
        ("driver/library version mismatch",),
        (),
        "the NVIDIA user-space library and the loaded kernel module are different versions "
        "(typically unattended-upgrades replaced the driver packages under a running module)",
        "reboot the node (or unload and reload the nvidia modules), and pin the driver packages",
    ),
    (
        "no devices",
        ("no devices were found",),
        (6,),
        "the driver is loaded but found no GPU",
        "check the VM really has a GPU attached (`lspci | grep -i nvidia`) and look for "
        "`RmInitAdapter failed` in `dmesg`; replace the node if the GPU is gone",
    ),
    (
        "fallen off the bus",
        ("fallen off the bus",),
        (15,),
        "the GPU has fallen off the bus or become inaccessible (Xid 79)",
        "reset the GPU or reboot; if it recurs, replace the node (`mlinfra heal`)",
    ),
    (
        "nvidia-smi missing",
        ("nvidia-smi: command not found", "nvidia-smi: not found"),
        (127,),
        "nvidia-smi is not installed on the node, so no NVIDIA driver is installed",
        "use an image with the NVIDIA driver (a Deep Learning VM image on GCP) or install the driver",
    ),
    (
        "NVML library missing",
        ("libnvidia-ml.so",),
        (12,),
        "the NVML library (libnvidia-ml.so) was not found: the driver's user-space part is missing",
        "reinstall the NVIDIA driver packages",
    ),
    (
        "query field unknown",
        ("is not a valid field to query",),
        (),
        "this driver's nvidia-smi does not know one of the queried fields (driver too old)",
        "update the NVIDIA driver; the query was: " + ",".join(QUERY_FIELDS),
    ),
    (
        "infoROM corrupted",
        ("inforom is corrupted",),
        (14,),
        "the GPU's infoROM is corrupted",
        "replace the node (`mlinfra heal`) and report the GPU",
    ),
    (
        "no permission",
        ("insufficient permissions",),
        (4,),
        "nvidia-smi was denied access to the GPU",
        "run the check as a user that may open /dev/nvidia*",
    ),
)


_HANG_CAUSE = "a wedged driver or a GPU that fell off the bus makes it hang"
_HANG_FIX = (
    "look for Xid errors (`dmesg | grep -i xid`), then reset the GPU or reboot; "
    "replace the node if it recurs (`mlinfra heal`)"
)


def diagnose(returncode: int | None, stdout: str, stderr: str, timeout_s: float | None = None) -> Diagnosis | None:
    """Recognise a known nvidia-smi failure; None when the output looks like a normal run.

    ``returncode`` None means the command timed out (the runner killed it).
    """
    if returncode is None:
        within = f" within {timeout_s:g} s" if timeout_s else ""
        return Diagnosis("timed out", f"nvidia-smi did not answer{within}: {_HANG_CAUSE}", _HANG_FIX)
    text = f"{stdout}\n{stderr}".casefold()
    for label, texts, _codes, cause, fix in _KNOWN_FAILURES:
        if any(t in text for t in texts):
            return Diagnosis(label, cause, fix)
    if returncode != 0:
        for label, _texts, codes, cause, fix in _KNOWN_FAILURES:
            if returncode in codes:
                return Diagnosis(label, cause, fix)
    return None


# --- the check -------------------------------------------------------------------------------


def _count_names(gpus: list[GpuInfo]) -> str:
    if not gpus:
        return "0 GPUs"
    counts = Counter(g.name or "unknown GPU" for g in gpus)
    return " + ".join(f"{n}× {name}" for name, n in counts.items())


def _same_or_range(values: list, unit: str = "") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "n/a"
    low, high = min(known), max(known)
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def summarize(gpus: list[GpuInfo]) -> str:
    """One line of key figures, e.g. '1× NVIDIA H100 80GB HBM3, driver 550.54.15, 81559 MiB, ...'."""
    drivers = sorted({g.driver_version or "n/a" for g in gpus})
    ecc_known = [g.ecc_uncorrected for g in gpus if g.ecc_uncorrected is not None]
    unknown = len(gpus) - len(ecc_known)
    if not ecc_known:
        ecc = "n/a"
    else:
        ecc = str(sum(ecc_known)) + (f" (n/a on {unknown})" if unknown else "")
    return (
        f"{_count_names(gpus)}, driver {'/'.join(drivers)}, "
        f"{_same_or_range([g.memory_total_mib for g in gpus], ' MiB')}, "
        f"{_same_or_range([g.temperature_c for g in gpus], '°C')}, "
        f"util {_same_or_range([g.utilization_pct for g in gpus], '%')}, ECC uncorrected {ecc}"
    )


def check_gpu(node: str, expected, expected_count: int, runner: Runner, timeout_s: float = 20) -> CheckResult:
    """Run nvidia-smi through ``runner`` and compare with the stack's ``expected`` catalog Gpu.

    ``expected`` None (``gpu = "none"``) skips the check. Never raises for a node problem:
    every failure is a failed CheckResult whose message says what went wrong and what to do.
    """
    if expected is None:
        return CheckResult(node, "gpu", True, "no GPU requested", message='skipped: gpu = "none"', skipped=True)
    names = NVIDIA_SMI_NAMES.get(expected.name, ())
    details: dict = {
        "command": list(COMMAND),
        "expected": {"gpu": expected.name, "count": expected_count, "nvidia_smi_names": list(names)},
    }
    started = time.monotonic()

    def result(passed: bool, summary: str, message: str = "") -> CheckResult:
        return CheckResult(
            node, "gpu", passed, summary, message=message, elapsed_s=time.monotonic() - started, details=details
        )

    try:
        returncode, stdout, stderr = runner.run(list(COMMAND), timeout_s)
    except CommandTimedOut as exc:  # the message names where it ran: "nvidia-smi on user@host:22 did not ..."
        details["diagnosis"] = "timed out"
        return result(False, "timed out", f"{exc}: {_HANG_CAUSE}. Fix: {_HANG_FIX}")
    except RunnerError as exc:  # SSH could not connect, log in, or trust the host
        details["diagnosis"] = exc.label
        return result(False, exc.label, str(exc))
    details["returncode"] = returncode
    found = diagnose(returncode, stdout, stderr)
    if found is None and returncode != 0:
        last = (stderr.strip() or stdout.strip()).splitlines()[-1:] or ["no output"]
        found = Diagnosis(
            f"exit {returncode}",
            f"nvidia-smi failed with exit status {returncode}: {last[0][:300]}",
            "run `nvidia-smi` on the node to see the full error",
        )
    if found is not None:
        details["diagnosis"] = found.label
        details["output"] = (stdout + stderr)[-2000:]
        return result(False, found.label, str(found))
    try:
        gpus = parse(stdout)
    except ParseError as exc:
        details["output"] = stdout[-2000:]
        return result(False, "unreadable output", f"{exc}. Fix: run the query on the node by hand: {' '.join(COMMAND)}")
    details["gpus"] = [asdict(g) for g in gpus]
    summary = summarize(gpus) if gpus else "0 GPUs"

    problems = []
    wrong_model = [g for g in gpus if not model_matches(expected.name, g.name)]
    if len(gpus) != expected_count or wrong_model:
        want = f"{names[0]}" if names else "no known nvidia-smi name"
        problems.append(f"expected {expected_count}× {expected.name} ({want}), found {_count_names(gpus)}")
    for gpu in gpus:
        if gpu.ecc_uncorrected:
            problems.append(
                f"GPU {gpu.index} ({gpu.uuid or gpu.name}) has {gpu.ecc_uncorrected} uncorrected ECC "
                "errors since the driver loaded: its memory is failing; drain the node and replace it "
                "(`mlinfra heal`), or reset the GPU if it was a one-off"
            )
    return result(not problems, summary, "; ".join(problems))
