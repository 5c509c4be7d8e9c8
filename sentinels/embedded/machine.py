"""What this machine offers to local jobs: CPU, memory, GPUs, job slots.

The `local:` block of the configuration sets them (`cpu`, `memory`, `gpu`, `slots`,
`labels`, `stop_grace`; the runtime keys are read by `runtimes.py`); what it leaves out is detected from the machine (cpu count,
/proc/meminfo, `nvidia-smi`). A bad block stops the executor at start with a clear message.
"""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..domain import duration, quantity
from ..domain.errors import ConfigError, InvalidSpec
from . import runtimes

KEYS = ("cpu", "memory", "gpu", "slots", "labels", "stop_grace") + runtimes.KEYS
DEFAULT_STOP_GRACE = 10.0


@dataclass(frozen=True)
class Capacity:
    cpu_millis: int
    memory_bytes: int
    gpus: tuple[int, ...]  # device indices for CUDA_VISIBLE_DEVICES
    slots: Optional[int] = None  # most jobs at once; None: as many as fit
    labels: dict = field(default_factory=dict)
    stop_grace: float = DEFAULT_STOP_GRACE


def memory_total(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def gpu_indices() -> tuple[int, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(int(line) for line in out.stdout.split() if line.strip().isdigit())


def capacity(config: Optional[dict]) -> Capacity:
    """Capacity from the `local:` configuration block, the rest detected."""
    raw = config or {}
    if not isinstance(raw, dict):
        raise ConfigError("configuration: local must be a mapping (cpu, memory, gpu, slots, labels, stop_grace)")
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    if unknown:
        raise ConfigError(f"configuration: unknown key(s) local.{', local.'.join(unknown)} (known: {', '.join(KEYS)})")
    try:
        cpu = quantity.cpu_millis(raw["cpu"], "local.cpu") if raw.get("cpu") is not None else (os.cpu_count() or 1) * 1000
        memory = quantity.memory_bytes(raw["memory"], "local.memory") if raw.get("memory") is not None else memory_total()
        gpus = gpu_indices()
        if raw.get("gpu") is not None:
            count = raw["gpu"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidSpec(f"local.gpu: expected a whole number of GPUs, got {count!r}")
            gpus = gpus[:count] if len(gpus) >= count else tuple(range(count))
        slots = raw.get("slots")
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
            raise InvalidSpec(f"local.slots: expected a whole number of at least 1, got {slots!r}")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidSpec("local.labels: expected a mapping of label names to strings")
        grace = float(duration.seconds(raw["stop_grace"], "local.stop_grace")) if raw.get("stop_grace") is not None \
            else DEFAULT_STOP_GRACE
    except InvalidSpec as e:
        raise ConfigError(f"configuration: {e.message}") from None
    return Capacity(cpu_millis=cpu, memory_bytes=memory, gpus=gpus, slots=slots, labels=dict(labels), stop_grace=grace)
