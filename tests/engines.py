"""Real container engines for the tests: Podman, Buildah and a `docker-registry` on loopback.

No engine, no registry and no internet are assumed: `engine_problem()` says why the
engine tests must skip, the test image is built here from scratch (Debian's static
busybox plus a marker file) and pushed to a registry this module starts on a free port.
"""

import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

from sentinels.embedded import engine, natsd, runtimes

BUSYBOX = Path("/bin/busybox")
MARKER = "built-by-sentinels-tests"
TOOLS = ("podman", "buildah", "docker-registry")


def engine_problem() -> Optional[str]:
    """None when Podman, Buildah and a registry can run here; else the reason to skip."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install podman buildah runc docker-registry busybox-static)"
    if not BUSYBOX.exists() or not _static(BUSYBOX):
        return "busybox-static not installed (the test image is a static busybox)"
    if os.geteuid() != 0:
        return "the engine tests run Podman as root (as CI does)"
    problem = engine.probe("podman", runtimes.RuntimeConfig(runtime="podman"))
    return f"podman does not answer: {problem}" if problem else None


def _static(path: Path) -> bool:
    """An ELF64 file without a PT_INTERP program header needs no dynamic loader."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, phentsize, phnum = (int.from_bytes(data[32:40], "little"), int.from_bytes(data[54:56], "little"),
                               int.from_bytes(data[56:58], "little"))
    return all(int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") != 3
               for i in range(phnum))


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    argv = ["podman", *engine.default_options("podman"), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out


def context_dir(root: Path, marker: str = MARKER) -> Path:
    """A build context: bin/ with busybox and its applets, and the marker file."""
    ctx = root / "context"
    (ctx / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, ctx / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in applets:
        if name != "busybox" and not (ctx / "bin" / name).exists():
            (ctx / "bin" / name).symlink_to("busybox")
    (ctx / "MARKER").write_text(marker + "\n")
    return ctx


CONTAINERFILE = "FROM scratch\nCOPY bin /bin\nCOPY MARKER /MARKER\nENV PATH=/bin\nCMD [\"/bin/sh\", \"-c\", \"cat /MARKER\"]\n"


def build(root: Path, tag: str) -> str:
    ctx = context_dir(root)
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    out = subprocess.run(["buildah", "bud", "--isolation", "chroot", "-t", tag, "-f", str(ctx / "Containerfile"),
                          str(ctx)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"buildah bud: {out.stderr.strip()}")
    return tag


class Registry:
    """`docker-registry serve` on a free loopback port, storage in a temporary directory."""

    def __init__(self, root: Path):
        self.port = natsd.free_port()
        self.host = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "registry.yml"
        cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                       f"http:\n  addr: {self.host}\nlog:\n  level: warn\n")
        self.log = root / "registry.log"
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start: " + self.log.read_text())
                time.sleep(0.05)

    def push(self, local: str, name: str) -> str:
        ref = f"{self.host}/{name}"
        podman("push", "--tls-verify=false", local, ref)
        return ref

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def unique_tag(prefix: str = "sentinels-test") -> str:
    return f"localhost/{prefix}:{uuid.uuid4().hex[:8]}"
