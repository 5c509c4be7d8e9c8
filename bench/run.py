"""`make bench`: every benchmark, one after the other (about 10 minutes on 2 cores, plus the
simulated Kubernetes cluster's burst of bench/simcluster.py, which takes longer)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
failed = 0
for name in ("foundation", "scheduling", "lifecycle", "sharing", "containers", "simcluster", "api", "observe"):
    print(f"\n== bench/{name}.py", flush=True)
    failed |= subprocess.run([sys.executable, str(HERE / f"{name}.py")], cwd=HERE).returncode
sys.exit(failed)
