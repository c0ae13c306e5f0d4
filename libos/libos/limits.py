"""Resource limits of the enclave: memory checks before allocation, a hard cap, peak memory.

The memory budget is ``[resources] memory_mb`` of libos.toml, per enclave
process (as Gramine's ``sgx.enclave_size`` is per process: each child process is
its own enclave there). The launcher calls :func:`install` before it imports the
entry point; from then on:

- :func:`check_allocation` ``(nbytes, what)`` raises :class:`MemoryLimitError`,
  naming the limit and the figure needed, when this process's resident memory
  plus ``nbytes`` would exceed the budget. Call it *before* allocating, with an
  estimate such as :func:`estimate_xgboost_bytes`, so a job too large for the
  enclave fails cleanly instead of dying half way.
- The address space is capped with ``setrlimit(RLIMIT_AS)`` at the budget plus
  :func:`address_space_headroom` as a backstop for allocations nobody checked:
  past it, ``malloc``/``mmap`` fail (Python raises MemoryError; native code may
  abort). The headroom exists because a process reserves address space it never
  touches (thread stacks, malloc arenas, mapped libraries); the launcher bounds
  glibc's arenas with ``MALLOC_ARENA_MAX`` so that headroom stays small.
- :func:`peak_rss_bytes` reports the peak resident memory (``VmHWM``), so the
  worker can report it per job and an operator can size the enclave;
  :func:`reset_peak_rss` restarts the count for the next job.

Outside an enclave (no limits installed) :func:`check_allocation` checks against
the process's ``RLIMIT_AS`` if one is set and otherwise allows everything: there
is no configured budget to enforce.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from typing import Any

from protocols.errors import DetenteError

MIB = 1 << 20

# Memory XGBoost `hist` training adds to its training data, already held as
# Arrow columns (the enclave worker builds a QuantileDMatrix from them batch by
# batch): the quantised index, copies of the batch being read, sketches and
# histograms (a multiple of the float32 matrix, rows × features × 4 bytes, and
# a part per feature); gradients, prediction caches, labels and row partitions
# (XGBOOST_ROW_BYTES a row for each output: a multiclass model has one per
# class); and a fixed part (about 45 MiB the first time a process trains: XGBoost's
# and OpenMP's own state). Calibrated on the peaks of fresh job processes
# (xgboost-cpu 3.2, max_depth 6, 2 threads; 200k–2M rows × 5–200 features,
# with and without text columns and 5 classes): the measured addition was 0.2
# to 0.9 × the matrix, and this estimate 1.1 to 3 × what was measured, the
# most for small or narrow tables. tests/libos/test_libos_limits.py measures it again.
XGBOOST_HIST_FACTOR = 0.75
XGBOOST_FEATURE_BYTES = 512 << 10
XGBOOST_ROW_BYTES = 16
XGBOOST_FIXED_BYTES = 48 * MIB
# What a job process's libraries (numpy, pyarrow, XGBoost) add once imported: the
# worker starts importing them as the job's data starts to arrive.
JOB_LIBRARY_BYTES = 160 * MIB
# Address space a process reserves beyond what it touches, measured on the
# enclave worker in the e2e tests (VmPeak against VmHWM): about 0.3 GiB for the
# service (60 MiB resident), about 1.6 GiB for a job process that trained
# XGBoost on pyarrow data (120 MiB resident): mapped libraries, thread stacks,
# and the reservations of mimalloc (pyarrow's allocator) and OpenMP. See
# address_space_headroom.
BASE_HEADROOM_BYTES = 2048 * MIB
PER_THREAD_HEADROOM_BYTES = 72 * MIB  # an 8 MiB stack and a 64 MiB malloc arena


class MemoryLimitError(DetenteError, MemoryError):
    """A job needs more memory than the enclave's configured budget allows."""

    def __init__(self, message: str, needed_bytes: int, limit_bytes: int, what: str) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes
        self.what = what


@dataclass(frozen=True)
class Limits:
    """The enclave's resource limits ([resources] of libos.toml)."""

    memory_bytes: int
    threads: int
    processes: int

    @classmethod
    def from_resources(cls, resources: Any) -> Limits:
        """From a ``libos.config.Resources``."""
        return cls(
            memory_bytes=int(resources.memory_mb) * MIB,
            threads=int(resources.threads),
            processes=int(getattr(resources, "processes", 1)),
        )

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MIB


def address_space_headroom(limits: Limits) -> int:
    """Address space allowed beyond the memory budget before RLIMIT_AS stops allocation."""
    # Thread count: the configured workers, plus gRPC's pool and Python's own.
    return BASE_HEADROOM_BYTES + PER_THREAD_HEADROOM_BYTES * (limits.threads + 8)


def address_space_cap(limits: Limits) -> int:
    return limits.memory_bytes + address_space_headroom(limits)


def malloc_arena_max(limits: Limits) -> int:
    """glibc arenas to allow (MALLOC_ARENA_MAX): one per worker thread, at least 2."""
    return max(2, limits.threads)


_installed: Limits | None = None


def install(limits: Limits, cap_address_space: bool = True) -> None:
    """Make ``limits`` this process's budget; cap its address space (a backstop)."""
    global _installed
    if cap_address_space:
        cap = address_space_cap(limits)
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    _installed = limits


def current() -> Limits | None:
    """The installed limits, or None outside an enclave."""
    return _installed


def _status_field(name: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes, or None where there is no procfs."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()  # the best bound there is without procfs


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (VmHWM; since the last reset_peak_rss)."""
    hwm = _status_field("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_rss_children_bytes() -> int:
    """Largest peak resident memory among this process's finished, waited-for children."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Restart the peak count (VmHWM) at the current resident memory; False if unsupported.

    Writing "5" to /proc/self/clear_refs resets the peak RSS (Linux >= 4.0,
    Documentation/filesystems/proc.rst); the egress guard allows exactly this file.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.1f} MiB"


def _limit_bytes() -> tuple[int, str] | None:
    if _installed is not None:
        return _installed.memory_bytes, "[resources] memory_mb in libos.toml"
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return int(soft), "this process's RLIMIT_AS"
    return None


def check_allocation(nbytes: int, what: str) -> None:
    """Raise MemoryLimitError if allocating ``nbytes`` more would exceed the memory budget.

    ``what`` names the allocation in the message (e.g. "training matrix of job
    j1 (120000 rows × 30 features)"). The figure compared with the budget is
    this process's resident memory now plus ``nbytes``.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    limit = _limit_bytes()
    if limit is None:
        return
    limit_bytes, source = limit
    in_use = rss_bytes()
    needed = in_use + nbytes
    if needed <= limit_bytes:
        return
    raise MemoryLimitError(
        f"{what} needs {_mib(nbytes)} on top of the {_mib(in_use)} in use, "
        f"{_mib(needed)} in all, more than the enclave's memory limit of "
        f"{_mib(limit_bytes)} ({source}); raise the limit and rebuild the image, "
        "or run a smaller job",
        needed_bytes=needed,
        limit_bytes=limit_bytes,
        what=what,
    )


def _check_sizes(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def estimate_xgboost_bytes(
    rows: int, features: int, bytes_per_value: int = 4, outputs: int = 1
) -> int:
    """Memory XGBoost ``hist`` training adds to its rows × features training data.

    rows × features × bytes_per_value × XGBOOST_HIST_FACTOR + features ×
    XGBOOST_FEATURE_BYTES + rows × outputs × XGBOOST_ROW_BYTES +
    XGBOOST_FIXED_BYTES, ``outputs`` being the model's outputs per row (the
    classes of a multiclass model).
    """
    _check_sizes(rows=rows, features=features, bytes_per_value=bytes_per_value, outputs=outputs)
    matrix = rows * features * bytes_per_value
    return (
        math.ceil(matrix * XGBOOST_HIST_FACTOR)
        + features * XGBOOST_FEATURE_BYTES
        + rows * max(outputs, 1) * XGBOOST_ROW_BYTES
        + XGBOOST_FIXED_BYTES
    )


def estimate_job_bytes(data_bytes: int, rows: int, vertical: bool = False, outputs: int = 1) -> int:
    """Memory a training job needs for data sets of ``data_bytes`` (sealed) and ``rows`` rows.

    Known before any data arrives: the data sets held as Arrow tables (about
    their sealed size; twice for a vertical join, which copies the rows it
    keeps), XGBoost's training on them (at most their size, by the measurements
    above), XGBOOST_ROW_BYTES a row for each output, XGBOOST_FIXED_BYTES and the
    job's libraries (JOB_LIBRARY_BYTES).
    """
    _check_sizes(data_bytes=data_bytes, rows=rows, outputs=outputs)
    held = data_bytes * (2 if vertical else 1)
    return (
        held
        + data_bytes
        + rows * max(outputs, 1) * XGBOOST_ROW_BYTES
        + XGBOOST_FIXED_BYTES
        + JOB_LIBRARY_BYTES
    )
