"""Run `fastredir serve` as a child process for tests."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time


class ServeProcess:
    """A `python -m fastredir serve ...` child; `with` stops it by pid.

    `prefix` runs it under another command, such as `ip netns exec NS`.
    """

    def __init__(self, *args: str, prefix: tuple[str, ...] = (), env: dict | None = None) -> None:
        self.command = [*prefix, sys.executable, "-m", "fastredir", "serve", *args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.output = ""

    def start(self, listeners: int, timeout: float = 15.0) -> ServeProcess:
        """Start and wait until it logged `listeners` "listening on" lines."""
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while self.output.count("listening on") < listeners or "fast path:" not in self.output:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"fastredir serve did not start: {self.command}\n{self.output}")
                if selector.select(remaining):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    self.output += chunk.decode("utf-8", "replace")
        return self

    def wait_for(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        """Read output until `text` appears `count` times."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while self.output.count(text) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise RuntimeError(f"{text!r} did not appear in fastredir's output:\n{self.output}")
                if selector.select(remaining):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    self.output += chunk.decode("utf-8", "replace")

    def stop_and_output(self) -> str:
        self.stop()
        return self.output

    def stop(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM, wait, and collect the rest of the output."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            rest, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            rest, _ = self.process.communicate()
        self.output += (rest or b"").decode("utf-8", "replace")
        return self.process.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
