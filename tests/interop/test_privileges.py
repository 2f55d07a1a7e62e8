"""serve binds port 500 as root, then runs as an unprivileged user."""

from __future__ import annotations

import pwd
import sys

import pytest

from .conftest import FASTREDIR_START_TIMEOUT, REPOSITORY_ROOT
from .lab import REDIRECTOR

pytestmark = pytest.mark.interop


def test_drops_to_configured_user(lab, tmp_path):
    nobody = pwd.getpwnam("nobody")
    config = tmp_path / "fastredir.yaml"
    control = tmp_path / "control.sock"
    config.write_text(
        "listen: [{address: 127.0.0.1, port: 500}]\n"
        "gateways: [192.0.2.11]\n"
        f"control: {{socket: {control}}}\n"
        "user: nobody\n"
    )
    tmp_path.chmod(0o755)
    config.chmod(0o644)
    serve = lab.spawn(
        REDIRECTOR,
        [sys.executable, "-m", "fastredir", "serve", "--config", str(config)],
        "fastredir",
        cwd=REPOSITORY_ROOT,
    )
    lab.wait_for_output(serve, "running as user nobody", timeout=FASTREDIR_START_TIMEOUT)
    with open(f"/proc/{serve.pid}/status") as status:
        uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    assert {int(uid) for uid in uids} == {nobody.pw_uid}
    result = lab.run(
        REDIRECTOR,
        [sys.executable, "-m", "fastredir", "probe", "127.0.0.1", "--timeout", "1", "--attempts", "2"],
        check=False,
        timeout=15,
    )
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{serve.output()}"
    assert control.stat().st_uid == nobody.pw_uid
    assert lab.stop(serve) == 0, serve.output()
