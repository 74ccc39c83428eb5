"""Pick the compute device (CUDA → MPS → CPU), size the CPU thread pool to what the process may use, and name the
class of machine that timings were measured on."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from digits.errors import UserError


class DeviceError(UserError, RuntimeError):
    """The requested device is not available here."""


def available_cpus() -> int:
    """CPUs this process may actually use: affinity mask, capped by a cgroup v2/v1 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota)) if quota else n


def _cgroup_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return max(1, quota_us // period_us)
    except (OSError, ValueError):
        pass
    return None


def select(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit choice that is unavailable is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (preference == "cuda" and not cuda) or (preference == "mps" and not mps):
        raise DeviceError(f"train.device={preference} requested but no {preference.upper()} device is available")
    return torch.device(preference)


def configure(device: torch.device, seed: int, deterministic: bool) -> None:
    """Seed every RNG, set CPU threads, and choose determinism vs. autotuned kernels."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.set_num_threads(available_cpus())
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (a debugging aid for reads of uninitialised
        # memory): ~20 % of a CPU training step here, and results are the same without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``, so that a host clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Clock:
    """Seconds from ``start()`` to marks taken without waiting for the device: CUDA events on CUDA (read after the
    work), the host clock after a ``synchronize`` elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self._start: torch.cuda.Event | float = 0.0

    def mark(self) -> torch.cuda.Event | float:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self._start = self.mark()

    def seconds(self, mark: torch.cuda.Event | float) -> float:
        if isinstance(mark, torch.cuda.Event):
            mark.synchronize()
            return self._start.elapsed_time(mark) / 1e3
        return mark - self._start


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def cpu_isa(cpuinfo: str | None = None, capability: str | None = None) -> str:
    """The CPU's instruction-set class from the flags in /proc/cpuinfo: "AVX-512", "AVX2", else the architecture
    (e.g. "x86_64", "aarch64"). Where PyTorch's kernels are held below the CPU's class (``ATEN_CPU_CAPABILITY``,
    as scripts/avx2.env does), the class they run is what timings depend on: "AVX2 (imitated on AVX-512)".
    ``cpuinfo`` and ``capability`` (``torch.backends.cpu.get_cpu_capability()``) default to this machine's."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")),
                 set())  # fmt: skip
    hardware = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine() or "unknown"
    used = {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(capability or torch.backends.cpu.get_cpu_capability())
    if hardware == "AVX-512" and used == "AVX2":
        return "AVX2 (imitated on AVX-512)"
    return hardware


def machine_class(device: torch.device) -> str:
    """The class of machine a timing on ``device`` was measured on, e.g. "CPU AVX-512, 2 cores" (the cores this
    process may use) or "CUDA NVIDIA H200": timings are comparable within a class, not across classes."""
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        cores = available_cpus()
        return f"CPU {cpu_isa()}, {cores} core{'s' if cores != 1 else ''}"
    return device.type.upper()


def peak_rss_mb() -> int | None:
    """Peak resident memory of this process so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024))  # bytes on macOS, KiB on Linux
