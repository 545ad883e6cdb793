"""Helpers shared by the benchmarks: thread limits, machine facts, interleaved timing, tables.

Shared machines are noisy, so every benchmark here times its contenders
interleaved (A B C, B C A, C A B, ...), several times each, after a warm-up,
and compares medians.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np


def log(message: str) -> None:
    """Progress for the reader, on stderr (stdout carries the table or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def import_torch():
    """The torch module, or None (with a message on stderr) where it is not installed."""
    try:
        import torch
    except ImportError:
        log("torch is not installed: the PyTorch column is skipped (pip install torch==2.13.0)")
        return None
    return torch


def limit_threads(threads: int, torch=None):
    """Give numpy's BLAS, every OpenMP runtime and torch the same number of threads.

    Returns:
        The threadpoolctl limiter; keep a reference for as long as the limit should hold.
    """
    from threadpoolctl import threadpool_limits

    limiter = threadpool_limits(limits=threads)
    if torch is not None:
        torch.set_num_threads(threads)
    return limiter


def machine_info(torch=None) -> dict[str, Any]:
    """The facts a reader needs to compare figures: CPU, versions, BLAS libraries and their threads."""
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    pools = [
        {
            "library": pool.get("internal_api"),
            "version": pool.get("version"),
            "threads": pool.get("num_threads"),
            "architecture": pool.get("architecture"),
            "file": os.path.basename(pool.get("filepath", "")),
        }
        for pool in threadpool_info()
    ]
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": available_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "threadpools": pools,
    }
    try:
        import sklearn

        info["sklearn"] = sklearn.__version__
    except ImportError:
        info["sklearn"] = None
    if torch is not None:
        config = torch.__config__.show()
        blas = next((part.split("=", 1)[1] for part in config.replace(",", " ").split() if part.startswith("BLAS_INFO=")), None)
        info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads(), "blas": blas}
    else:
        info["torch"] = None
    return info


def describe_machine(info: dict[str, Any]) -> list[str]:
    """The machine facts as a few printable lines."""
    lines = [
        f"CPU: {info['cpu']} ({info['cores']} cores available)",
        f"python {info['python']}, numpy {info['numpy']}, scikit-learn {info['sklearn']}",
        f"OPENBLAS_CORETYPE: {info['OPENBLAS_CORETYPE'] or 'unset'}",
    ]
    for pool in info["threadpools"]:
        arch = f", {pool['architecture']}" if pool.get("architecture") else ""
        lines.append(f"threadpool: {pool['library']} {pool['version'] or ''} ({pool['file']}){arch}: {pool['threads']} threads")
    torch = info.get("torch")
    if torch:
        lines.append(f"torch {torch['version']}: BLAS {torch['blas']}, {torch['threads']} threads")
    return lines


class Timings(NamedTuple):
    """Seconds per call of one contender: wall-clock, and CPU time of this process."""

    wall: list[float]
    cpu: list[float]


def interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timings]:
    """Time each contender ``repeats`` times, interleaved, after ``warmup`` untimed calls each.

    Round r starts at contender r mod m, so none always runs first (or right after
    the most memory-hungry one). The garbage collector is paused inside each timing.
    Besides wall-clock time, the process's CPU time is recorded: with one thread it
    is the work done, whatever else the machine runs.

    Returns:
        The timings per contender, in the order they ran.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: Timings([], []) for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            gc.disable()
            try:
                cpu, wall = time.process_time(), time.perf_counter()
                contenders[name]()
                times[name].wall.append(time.perf_counter() - wall)
                times[name].cpu.append(time.process_time() - cpu)
            finally:
                gc.enable()
    return times


def summary(times: Timings) -> dict[str, Any]:
    """Median and min wall time, every run, and the median CPU time, in seconds."""
    return {
        "median_s": statistics.median(times.wall),
        "min_s": min(times.wall),
        "times_s": times.wall,
        "cpu_median_s": statistics.median(times.cpu),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table: first column left, the others right."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
