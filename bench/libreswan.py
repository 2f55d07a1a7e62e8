"""libreswan's pluto as a redirector (global-redirect=yes), for comparison.

Debian's libreswan package conflicts with strongSwan's charon, so it is
not installed: `apt-get download` fetches the .deb once into a cache
folder and `dpkg -x` unpacks it there.  pluto starts its helpers from the
fixed folder /usr/libexec/ipsec, so it runs in a private mount namespace
(`unshare --mount`) where the unpacked usr/libexec is bind-mounted over
/usr/libexec.  Nothing on the host changes, and nothing needs undoing.
pluto also needs a network namespace of its own, because it configures
the kernel's IPsec state of the namespace it runs in.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess

CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fastredir-bench"
PLUTO = "usr/libexec/ipsec/pluto"
RUNTIME_PACKAGES = "libnss3 libnss3-tools libunbound8 libldns3 libevent-2.1-7 libevent-pthreads-2.1-7 libcap-ng0"


@dataclasses.dataclass(frozen=True)
class Installation:
    root: pathlib.Path  # the folder the .deb was unpacked into
    version: str


def _unpacked_root() -> pathlib.Path:
    configured = os.environ.get("FASTREDIR_BENCH_LIBRESWAN")
    return pathlib.Path(configured) if configured else CACHE / "libreswan"


def _fetch(root: pathlib.Path, log) -> str | None:
    """Download and unpack the libreswan .deb into `root`; return an error
    message, or None on success."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "apt-get and dpkg are needed to fetch libreswan"
    downloads = root.parent / "libreswan-deb"
    downloads.mkdir(parents=True, exist_ok=True)
    log(f"libreswan: fetching the Debian package into {downloads} (apt-get download libreswan)")
    result = subprocess.run(
        ["apt-get", "download", "libreswan"],
        cwd=downloads, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    packages = sorted(downloads.glob("libreswan_*.deb"))
    if result.returncode != 0 or not packages:
        message = (result.stderr or result.stdout).strip().splitlines()
        detail = message[-1] if message else "no package file"
        return f"apt-get download libreswan failed ({detail}); run apt-get update first"
    unpack = subprocess.run(
        ["dpkg", "-x", str(packages[-1]), str(root)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    if unpack.returncode != 0:
        return f"dpkg -x {packages[-1].name} failed: {unpack.stderr.strip()}"
    return None


def _missing_libraries(pluto: pathlib.Path) -> list[str]:
    result = subprocess.run(
        ["ldd", str(pluto)], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=60
    )
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def find(fetch: bool, log) -> tuple[Installation | None, str | None]:
    """Return the unpacked libreswan, fetching it if allowed, or None and
    the reason it cannot run."""
    if os.geteuid() != 0:
        return None, "pluto needs root (network and mount namespaces)"
    if shutil.which("unshare") is None:
        return None, "the unshare command (util-linux) is missing"
    root = _unpacked_root()
    pluto = root / PLUTO
    if not pluto.exists():
        if not fetch:
            return None, f"{pluto} not found and fetching is off"
        error = _fetch(root, log)
        if error:
            return None, error
    missing = _missing_libraries(pluto)
    if missing:
        return None, (
            f"pluto's run-time libraries are missing ({', '.join(missing)}); "
            f"install them with: apt-get install {RUNTIME_PACKAGES}"
        )
    if shutil.which("certutil") is None:
        return None, "certutil is missing (apt-get install libnss3-tools); pluto needs an NSS database"
    version = subprocess.run(
        [str(pluto), "--version"], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=60
    )
    words = (version.stdout or version.stderr).split()
    return Installation(root, " ".join(words[:2]) if words else "libreswan"), None


def prepare(run_directory: pathlib.Path, address: str, gateway: str) -> None:
    """Write pluto's configuration and an empty NSS database."""
    (run_directory / "run").mkdir(parents=True, exist_ok=True)
    nss = run_directory / "nss"
    nss.mkdir(exist_ok=True)
    if not (nss / "cert9.db").exists():
        # On an existing database certutil -N prompts for its password
        # without end, so it runs only once, with no input.
        subprocess.run(
            ["certutil", "-N", "-d", f"sql:{nss}", "--empty-password"],
            check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    # Every IKE_SA_INIT is answered with a REDIRECT before any state is
    # created; no connection is loaded.  IKEv1 is dropped.
    (run_directory / "ipsec.conf").write_text(
        "config setup\n"
        "\tglobal-redirect=yes\n"
        f"\tglobal-redirect-to={gateway}\n"
        f"\tlisten={address}\n"
        "\tikev1-policy=drop\n"
        f"\tdumpdir={run_directory / 'run'}\n"
    )
    (run_directory / "ipsec.secrets").write_text("")


def command(installation: Installation, run_directory: pathlib.Path, prefix: list[str]) -> list[str]:
    """Return the command that runs pluto in the foreground.

    The shell binds the unpacked usr/libexec over /usr/libexec in the new
    mount namespace, then execs the network-namespace prefix and pluto,
    so the returned process's pid is pluto's.
    """
    script = 'mount --bind "$0" /usr/libexec && exec "$@"'
    return [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", script, str(installation.root / "usr/libexec"),
        *prefix,
        "/usr/libexec/ipsec/pluto", "--nofork",
        "--config", str(run_directory / "ipsec.conf"),
        "--nssdir", str(run_directory / "nss"),
        "--rundir", str(run_directory / "run"),
        "--secretsfile", str(run_directory / "ipsec.secrets"),
        "--logfile", str(run_directory / "pluto.log"),
    ]  # fmt: skip
