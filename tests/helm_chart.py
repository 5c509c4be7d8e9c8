"""Real Helm (helm-python-sdk, Helm v4 as a library) on helm/sentinels, for the chart tests.

A chart handle is mutated by render, so every render loads a fresh one. Render does not
parse YAML: `documents()` does. Dependencies cannot be downloaded here, so lint runs on a
temporary copy with stub subcharts (a Chart.yaml each), and a render leaves them out.
CRD schemas come from ../shared/crds when that folder exists (never copied into the repo).
"""

import json
import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "sentinels"
CRDS = ROOT.parent / "shared" / "crds"
KNATIVE_APIS = ["serving.knative.dev/v1", "eventing.knative.dev/v1", "sources.knative.dev/v1",
                "operator.knative.dev/v1beta1"]
MONITORING_APIS = ["monitoring.coreos.com/v1"]


def render(values: dict | None = None, *, name: str = "sentinels", namespace: str = "sentinels",
           api_versions: list[str] | None = None, chart: Path = CHART) -> dict[str, str]:
    """template path -> rendered text, as `helm template --api-versions ...` would give."""
    import helm_python
    from helm_python import _native

    handle = helm_python.Chart.load(str(chart))  # fresh: render mutates the handle
    opts = {"name": name, "namespace": namespace, "is_install": True}
    if api_versions:
        opts["api_versions"] = api_versions
    out = _native.call_string("helm_render", handle._raw(), json.dumps(values or {}), json.dumps(opts))
    return json.loads(out)


def documents(rendered: dict[str, str]) -> list[dict]:
    """Every object of a render (NOTES.txt and empty documents left out)."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def render_all(values: dict | None = None, **kw) -> list[dict]:
    """Objects of a render on a cluster that serves Knative and the Prometheus operator."""
    kw.setdefault("api_versions", KNATIVE_APIS + MONITORING_APIS)
    return documents(render(values, **kw))


def dependencies() -> list[dict]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]


def stubbed_copy(tmp: Path) -> Path:
    """A copy of the chart with a stub subchart per dependency (name and version only)."""
    dest = tmp / "sentinels"
    shutil.copytree(CHART, dest, ignore=shutil.ignore_patterns("charts", "*.tgz"))
    for dep in dependencies():
        sub = dest / "charts" / dep["name"]
        sub.mkdir(parents=True)
        (sub / "Chart.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "v2", "name": dep["name"], "version": str(dep["version"]).lstrip("v")}))
    return dest


def crd_schemas() -> dict[tuple[str, str], dict] | None:
    """(apiVersion, kind) -> openAPIV3Schema of every served version, or None without ../shared/crds."""
    if not CRDS.is_dir():
        return None
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served") and "schema" in version:
                    out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out
