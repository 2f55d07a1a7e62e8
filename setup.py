"""Build script: declares the Cython fast path as an extension module.

The generated C file is not committed; Cython (a build requirement in
pyproject.toml) produces it at build time.  Without a C compiler the
build goes on without the extension, and fastredir runs its pure-Python
fast path, about eight times slower; FASTREDIR_REQUIRE_EXTENSION=1 makes
a failed compilation fail the install instead.
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_EXTENSION = os.environ.get("FASTREDIR_REQUIRE_EXTENSION") == "1"


class OptionalBuildExt(build_ext):
    """Build the extension, or warn and skip it when compiling fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # setuptools raises several distutils error types
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc):
        if REQUIRE_EXTENSION:
            raise exc
        print(
            f"WARNING: the Cython fast path was not built ({exc}); fastredir will use its "
            "pure-Python fast path. Install a C compiler and the Python headers "
            "(Debian: gcc python3-dev) and reinstall for the fast one.",
            file=sys.stderr,
        )


extensions = [
    Extension(
        "fastredir._fastpath",
        ["fastredir/_fastpath.pyx"],
        extra_compile_args=["-O2"],
        define_macros=[("_GNU_SOURCE", "1")],
    )
]

setup(
    cmdclass={"build_ext": OptionalBuildExt},
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
