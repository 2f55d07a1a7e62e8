from __future__ import annotations

import pytest

from fastredir.fastpath import select_implementation


@pytest.fixture(params=["cython", "python"])
def implementation(request):
    """Each fast-path implementation in turn (the Cython one must be built)."""
    if request.param == "python":
        return select_implementation(pure=True)
    from fastredir import _fastpath

    return _fastpath
