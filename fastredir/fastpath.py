"""Choose the fast-path implementation.

The Cython extension is used when it is built; the pure-Python twin
(`fallback` with `pyloop`) otherwise, or when FASTREDIR_PURE=1 is set in
the environment.  Both expose `compile_table()`, `process()` and `Loop`
with the same contract.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from fastredir import fallback, pyloop

log = logging.getLogger("fastredir")


class _PurePython:
    IMPLEMENTATION = "python"
    compile_table = staticmethod(fallback.compile_table)
    process = staticmethod(fallback.process)
    process_many = staticmethod(fallback.process_many)
    Loop = pyloop.Loop


def _load_cython() -> ModuleType | None:
    try:
        from fastredir import _fastpath
    except ImportError as exc:
        log.warning(
            "the Cython fast path is not available (%s); using the pure-Python one. "
            "Build it with 'pip install .' or 'python setup.py build_ext --inplace'",
            exc,
        )
        return None
    return _fastpath


def select_implementation(pure: bool | None = None) -> object:
    """Return the module-like object implementing the fast path."""
    if pure is None:
        pure = os.environ.get("FASTREDIR_PURE", "") not in ("", "0")
    if not pure:
        cython = _load_cython()
        if cython is not None:
            return cython
    return _PurePython
