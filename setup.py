"""Build script: declares the Cython fast path as an extension module.

The generated C file is not committed; Cython (a build requirement in
pyproject.toml) produces it at build time.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fastredir._fastpath",
        ["fastredir/_fastpath.pyx"],
        extra_compile_args=["-O2"],
        define_macros=[("_GNU_SOURCE", "1")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
