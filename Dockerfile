# The one image of sentinels: the shared core and the four functions. A Knative Service
# picks its function with args (`--target <fn> --source functions/<fn>/main.py ...`); the
# `sentinels` CLI is inside too (the chart's `helm test` uses it).
#
#   buildah bud -t sentinels:0.1.0 .          (or docker build)
#   --build-arg BASE=<image with python3.11+ and venv>   another base (default pinned below)
#   --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheels"   offline: a wheelhouse mounted
#     at /wheels for the build (`buildah bud --volume DIR:/wheels:ro`), no package index needed

ARG BASE=docker.io/library/python:3.11.14-slim-bookworm

# --- build: a virtual environment with sentinels and its server-side extras ---------------
FROM ${BASE} AS build
ARG PIP_INSTALL_ARGS=""
SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sentinels ./sentinels
COPY functions ./functions
COPY cli ./cli
RUN python3 -m venv /opt/sentinels \
 && /opt/sentinels/bin/pip install --no-cache-dir ${PIP_INSTALL_ARGS} "/src[server]" \
 && mkdir -p /app \
 && ln -s "$(/opt/sentinels/bin/python -I -c 'import sentinels.functions as f, os; print(os.path.dirname(f.__file__))')" /app/functions \
 && find /opt/sentinels -name '__pycache__' -prune -exec rm -rf {} +

# --- run: no compilers, no pip cache, not root ---------------------------------------------
FROM ${BASE}
ENV PATH=/opt/sentinels/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SENTINELS_BACKEND=kubernetes
COPY --from=build /opt/sentinels /opt/sentinels
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["functions-framework"]
CMD ["--target", "submit", "--source", "functions/submit/main.py", "--signature-type", "http", "--asgi", "--port", "8080"]
