"""Pick the compute device (CUDA → MPS → CPU) and size the CPU thread pool to what the process may use."""

from __future__ import annotations

import os
import sys
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


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def peak_rss_mb() -> int | None:
    """Peak resident memory of this process so far, in MiB (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024))  # bytes on macOS, KiB on Linux
