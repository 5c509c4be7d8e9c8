"""Render the chart's monitoring templates with the real Helm library (helm-python-sdk) and
check custom resources against the real CRDs in ../shared/crds (read there, never copied)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm/sentinels"
CRDS = ROOT.parent / "shared/crds"
RULES_FILE = CHART / "files/prometheus-rules.yaml"
MONITORING = ("monitoring-exporter.yaml", "monitoring-alerts.yaml", "monitoring-dashboards.yaml",
              "monitoring-fluent-bit.yaml")


def render(values: dict | None = None, name: str = "rel") -> list[dict]:
    """The objects the chart's monitoring templates render with these values (real Helm, a
    cluster that serves the Prometheus operator's API)."""
    pytest.importorskip("helm_python", reason="helm-python-sdk (the Helm library) is not installed")
    from tests import helm_chart

    files = helm_chart.render(values, name=name, api_versions=helm_chart.MONITORING_APIS)
    docs = []
    for path, text in sorted(files.items()):
        if path.rsplit("/", 1)[-1] in MONITORING:
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def crd_schema(filename: str, version: str = "v1") -> dict:
    path = CRDS / filename
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared CRDs are read from beside the repository)")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            for v in doc["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{filename}: no version {version}")


def validate_custom(obj: dict, filename: str) -> None:
    """Raise jsonschema.ValidationError when obj breaks the CRD's openAPIV3Schema.

    The schema is used without a meta-schema check: CRDs carry Go regular expressions
    (e.g. `^(?i)(abort|warn)?$`) that Python's `re` cannot compile until a field uses them."""
    import jsonschema

    jsonschema.Draft7Validator(crd_schema(filename, obj["apiVersion"].split("/")[-1])).validate(obj)
