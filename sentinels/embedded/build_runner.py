"""Builds one job's image: fetch the Dockerfile and context, check the context size, run the tool.

`python -I build_runner.py PLAN.json` runs under `runner.py` (which records the exit code),
in its own process group, so everything slow (downloads, the build) happens outside the
executor and a cancel stops it all. Its output is the build log. Exit 0: the image exists
and its id is in the plan's `iidfile`; anything else is a failed build whose last lines
say why. Standalone (stdlib only), like runner.py.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

MAX_DOCKERFILE = 1 << 20


def fail(message: str) -> int:
    print(f"sentinels build: {message}", flush=True)
    return 2


def fetch(url: str, dest: Path, limit: int, timeout: float, what: str) -> str | None:
    """Download `url` into `dest`; None, or why it failed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer, open(dest, "wb") as out:
            total = 0
            while True:
                chunk = answer.read(1 << 16)
                if not chunk:
                    return None
                total += len(chunk)
                if total > limit:
                    return f"the {what} at {url} is over the {limit // 2**20} MiB limit"
                out.write(chunk)
    except Exception as e:  # DNS, refused, timeout, HTTP error: all one line for the job's reason
        return f"cannot fetch the {what} {url}: {getattr(e, 'reason', None) or e}"


def tree_size(root: Path, limit: int) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
            if total > limit:
                return total
    return total


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    work, limit, timeout = Path(plan["workdir"]), int(plan["max_context"]), float(plan["fetch_timeout"])
    work.mkdir(parents=True, exist_ok=True)
    dockerfile = plan["dockerfile"]
    if dockerfile.startswith(("http://", "https://")):
        why = fetch(dockerfile, work / "Dockerfile", MAX_DOCKERFILE, timeout, "Dockerfile")
        if why:
            return fail(why)
        dockerfile = str(work / "Dockerfile")
    elif not Path(dockerfile).is_file():
        return fail(f"the Dockerfile {dockerfile} does not exist")
    context = plan.get("context")
    if not context:
        context = str(work / "empty-context")
        Path(context).mkdir(exist_ok=True)
    elif context.startswith(("http://", "https://")):
        archive = work / "context.tar"
        why = fetch(context, archive, limit, timeout, "build context")
        if why:
            return fail(why)
        target = work / "context"
        shutil.rmtree(target, ignore_errors=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as e:
            return fail(f"the build context {plan['context']} is not a tar archive: {e}")
        context = str(target)
    elif not Path(context).is_dir():
        return fail(f"the build context {context} is not a directory")
    size = tree_size(Path(context), limit)
    if size > limit:
        return fail(f"the build context {plan.get('context')} is over the {limit // 2**20} MiB limit "
                    "(builds.max_context)")
    command = [*plan["tool"], "-f", dockerfile, "-t", plan["tag"], "--iidfile", plan["iidfile"], context]
    print("sentinels build: " + " ".join(command), flush=True)
    try:
        return subprocess.call(command)
    except OSError as e:
        return fail(f"cannot run {command[0]}: {e.strerror}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
