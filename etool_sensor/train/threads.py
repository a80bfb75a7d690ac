"""How many torch threads training uses (student, self-supervised stage and teacher alike)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch


def set_threads() -> int:
    """Use the idle cores only: on a busy 2-core box a second torch thread makes training ~5x slower.
    ETOOL_TORCH_THREADS=N fixes the count instead: the weights then do not depend on the machine's load
    (a model trained with another thread count sums in another order)."""
    fixed = os.environ.get("ETOOL_TORCH_THREADS", "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        torch.set_num_threads(int(fixed))
        return int(fixed)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:  # pragma: no cover
        busy = 0
    k = max(1, min(n, n - busy))
    torch.set_num_threads(k)
    return k


@contextmanager
def pinned_threads(n: int | None) -> Iterator[None]:
    """Every set_threads() inside (the self-supervised stage, the teacher, the student) uses `n` threads, unless
    ETOOL_TORCH_THREADS already says how many; the environment is as it was afterwards."""
    if not n or os.environ.get("ETOOL_TORCH_THREADS", "").strip():
        yield
        return
    os.environ["ETOOL_TORCH_THREADS"] = str(n)
    try:
        yield
    finally:
        os.environ.pop("ETOOL_TORCH_THREADS", None)
