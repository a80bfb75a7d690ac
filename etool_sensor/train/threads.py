"""How many torch threads training uses (student, self-supervised stage and teacher alike)."""

from __future__ import annotations

import os

import torch


def set_threads(fixed: int | None = None) -> int:
    """Use the idle cores only: on a busy 2-core box a second torch thread makes training ~5x slower.
    ETOOL_TORCH_THREADS=N, else `fixed` (a recipe's torch_threads), fixes the count instead: the weights then do
    not depend on the machine's load (a model trained with another thread count sums in another order)."""
    fixed = os.environ.get("ETOOL_TORCH_THREADS", "").strip() or str(fixed or "")
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
