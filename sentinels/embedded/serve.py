"""Serve one function with functions-framework's ASGI app under uvicorn.

`python -m sentinels.embedded.serve NAME PORT` is what `sentinels up` runs per function;
it is the same target and signature a Knative Service runs.
"""

import hmac
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

FUNCTIONS = {
    # name: (target, signature type, port offset from the submit port)
    "submit": ("submit", "http", 0),
    "schedule": ("schedule", "cloudevent", 1),
    "on_job_event": ("on_job_event", "http", 2),
    "alert": ("alert", "http", 3),
}


def source(name: str) -> Path:
    """The function's entry file, found without importing it: it is loaded by path, as
    functions-framework does in a Knative container (the embedded layer never imports
    the functions' code)."""
    spec = importlib.util.find_spec("sentinels.functions")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return Path(roots[0] if roots else ".") / name / "main.py"


INTERNAL = ("schedule", "on_job_event", "alert")  # only the broker (router) may post to these


def internal_only(app, token: bytes, header: bytes = b"x-sentinels-internal"):
    """ASGI wrapper: a POST without the stack's secret header is answered 403 (GET stays open
    for health checks)."""
    refusal = json.dumps({"error": "this internal function accepts events only from the sentinels broker"}).encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            given = dict(scope.get("headers") or []).get(header, b"")
            if not hmac.compare_digest(given, token):
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(refusal)).encode())]})
                await send({"type": "http.response.body", "body": refusal})
                return
        await app(scope, receive, send)

    return guarded


def internal_secret() -> bytes | None:
    path = os.environ.get("SENTINELS_INTERNAL_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip().encode()
    except OSError as e:
        raise SystemExit(f"cannot read the internal token {path}: {e.strerror}") from None


def available() -> list[str]:
    return [n for n in FUNCTIONS if source(n).exists()]


def main(argv=None) -> None:
    argv = argv or sys.argv[1:]
    name, port = argv[0], int(argv[1])
    target, signature, _ = FUNCTIONS[name]
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    import uvicorn
    from functions_framework.aio import create_asgi_app

    try:
        app = create_asgi_app(target, str(source(name)), signature)
    except Exception as e:  # configuration errors surface here, at start
        print(f"{name}: cannot start: {getattr(e, 'message', e)}", file=sys.stderr)
        sys.exit(2)
    secret = internal_secret() if name in INTERNAL else None
    if secret:
        app = internal_only(app, secret)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=3)


if __name__ == "__main__":
    main()
