"""Real container engines for the tests: Podman, Buildah and a `docker-registry` on loopback.

No engine, no registry and no internet are assumed: `engine_problem()` says why the
engine tests must skip, the test image is built here from scratch (Debian's static
busybox plus a marker file) and pushed to a registry this module starts on a free port.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
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
    """`docker-registry serve` on a free loopback port, storage in a temporary directory;
    with `users` ({name: password}) it asks for them (htpasswd, bcrypt, as the registry wants)."""

    def __init__(self, root: Path, users: Optional[dict] = None):
        self.port = natsd.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.users = users or {}
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "registry.yml"
        auth = ""
        if self.users:
            import bcrypt

            (root / "htpasswd").write_text("".join(
                f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n" for u, p in self.users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: sentinels-tests\n    path: {root / 'htpasswd'}\n"
        cfg.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                       f"http:\n  addr: {self.host}\nlog:\n  level: warn\n{auth}")
        self.log = root / "registry.log"
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    break
            except urllib.error.HTTPError as e:  # 401: up, and asking for credentials
                if e.code == 401 and self.users:
                    break
                raise
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start: " + self.log.read_text())
                time.sleep(0.05)

    def push(self, local: str, name: str) -> str:
        """Push with the first user's credentials on the command line: nothing is stored by a login."""
        ref = f"{self.host}/{name}"
        creds = ["--creds", ":".join(next(iter(self.users.items())))] if self.users else []
        podman("push", "--tls-verify=false", *creds, local, ref)
        return ref

    def auth_file(self, path: Path) -> Path:
        """An auth file in the format Podman and Docker use, with the first user's credentials (mode 0600)."""
        user, password = next(iter(self.users.items()))
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def unique_tag(prefix: str = "sentinels-test") -> str:
    return f"localhost/{prefix}:{uuid.uuid4().hex[:8]}"


def stack_env(home: Path, config: dict, **extra) -> dict:
    """The environment of an embedded default in `home` with `config` (config.yaml), on free ports."""
    import yaml

    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    base = natsd.free_block(6)
    env = {**os.environ, "SENTINELS_HOME": str(home), "SENTINELS_URL": f"http://127.0.0.1:{base}",
           "SENTINELS_NATS_URL": f"nats://127.0.0.1:{natsd.free_port()}", "SENTINELS_TICK": "1", **extra}
    env.pop("SENTINELS_RUNTIME", None)  # the configuration says which runtime
    return env


def supervise(env: dict, ready: str, timeout: float) -> subprocess.Popen:
    """The supervisor `up -d` starts, without its 60 s start-up limit (a loaded machine needs
    more): started in its own session, returned once its log says `ready`."""
    import sys

    log = Path(env["SENTINELS_HOME"]) / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "sentinels.embedded.supervisor"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while ready not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise AssertionError(log.read_text())
        time.sleep(0.5)
    return proc


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=60)
