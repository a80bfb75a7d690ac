"""The optional compiled twins of Python functions (etool_sensor/_native/, built as etool_sensor._fastpath).

Each module that has one asks for it here, once at import: None when the extension was not built (no C
compiler at install time), is a build from before that function, or ETOOL_PURE_PYTHON is set. The Python
function stays the reference and the fallback; a test per twin checks that both give the same results.
"""

from __future__ import annotations

import os
from typing import Any


def compiled(name: str) -> Any | None:
    """_fastpath.<name>, or None (see the module docstring)."""
    if os.environ.get("ETOOL_PURE_PYTHON"):
        return None
    try:
        from . import _fastpath
    except ImportError:
        return None
    return getattr(_fastpath, name, None)
