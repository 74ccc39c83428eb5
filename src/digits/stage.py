"""What every stage script shares: argument parsing with --params, clean errors, timing."""

from __future__ import annotations

import argparse
import atexit
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from digits.errors import Interrupted, UserError


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel at once.

    A training step frees and allocates the same activation buffers every batch. With glibc's defaults many are
    unmapped or trimmed, then faulted in again page by page: ~360 k minor page faults per 16k-image epoch of the
    default model on AVX2 (benchmarks/train_speed.py). Here buffers up to 32 MiB (glibc's ceiling) come from the
    heap, which grows in 64 MiB steps and is trimmed only beyond 1 GiB free at its top: freed memory stays with the
    process for its next allocations. Returns False where the C library is not glibc (nothing changed).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20)))  # fmt: skip


def collect_less_often() -> None:
    """Run the cyclic garbage collector's young generation after 100,000 net allocations instead of Python's 700, and
    the older ones after 50 and 100 of the younger's runs instead of 10. torch.compile, MLflow and matplotlib leave
    millions of long-lived objects, which every full collection walks again: with Python's thresholds the evaluate
    stage spent ~1.7 s in full collections; with these it took ~1 s less, at the same peak memory
    (docs/benchmarks.md). Cyclic garbage is still collected, later."""
    gc.set_threshold(100_000, 50, 100)


def malloc_in_use() -> str:
    """The allocator serving this process: "tcmalloc" when preloaded (scripts/tcmalloc.sh), else "glibc" or "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    if "libtcmalloc" in maps:
        return "tcmalloc"
    return "glibc" if "libc.so.6" in maps else "system"


def quiet_libraries() -> None:
    """Keep library chatter that says nothing about this run out of the stage logs."""
    # torch's C++-extension module warns on import, whenever nvcc is on PATH and no CUDA GPU is usable (a CUDA
    # toolkit on a CPU machine): "No CUDA runtime is found, using CUDA_HOME=...". Inductor imports it to compile.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # MLflow's system-metrics monitor announces every start and stop (and "Skip logging GPU metrics") at INFO
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars in stage logs


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process the default way
    raise Interrupted(signum)


def end_process(status: int) -> NoReturn:
    """Exit with ``status`` once the exit handlers have run and the standard streams are flushed, skipping the
    interpreter's teardown: its garbage collection over the millions of objects that torch.compile, MLflow and
    matplotlib leave took 3 s of the evaluate stage's ~30 s (docs/benchmarks.md)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run(main: Callable[[], None]) -> NoReturn:
    """Run a stage's main, then end the process (``end_process``); a UserError becomes one 'error:' line on stderr
    and exit status 2.

    SIGTERM and SIGINT raise ``Interrupted`` inside main, so open MLflow runs end as KILLED (tracking.start_run)
    and atomic writes clean up; the exit status is then 128 + the signal number, as for a default kill. Freed
    memory is kept for reuse (``keep_freed_memory``) and garbage collected less often (``collect_less_often``). Any
    other exception propagates (a traceback, status 1).
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    keep_freed_memory()
    collect_less_often()
    quiet_libraries()
    start = time.perf_counter()
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        end_process(2)
    except Interrupted as exc:
        print(f"interrupted by {signal.Signals(exc.signum).name}", file=sys.stderr)
        end_process(128 + exc.signum)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    end_process(0)
