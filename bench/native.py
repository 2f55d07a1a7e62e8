"""Compile the C programs of the benchmark (load generator, kernel floor)
with the system C compiler into a directory the caller chooses."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

SOURCE_DIRECTORY = pathlib.Path(__file__).resolve().parent
PROGRAMS = {"loadgen": "loadgen.c", "floor": "floor.c"}
CFLAGS = ["-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE"]


class BuildError(RuntimeError):
    """A C program of the benchmark failed to compile."""


def compiler() -> str:
    """Return the C compiler: $CC, else gcc, else cc."""
    for candidate in (os.environ.get("CC"), "gcc", "cc"):
        if candidate and shutil.which(candidate):
            return candidate
    raise BuildError("no C compiler found: install gcc (apt-get install gcc) or set CC")


def build(name: str, output_directory: pathlib.Path) -> pathlib.Path:
    """Compile program `name` (a key of PROGRAMS) and return the binary's path."""
    source = SOURCE_DIRECTORY / PROGRAMS[name]
    binary = output_directory / name
    command = [compiler(), *CFLAGS, "-o", str(binary), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=300)
    if result.returncode != 0:
        raise BuildError(f"compiling {source.name} failed:\n{' '.join(command)}\n{result.stderr}")
    return binary


def build_all(output_directory: pathlib.Path) -> dict[str, pathlib.Path]:
    return {name: build(name, output_directory) for name in PROGRAMS}
