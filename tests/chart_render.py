"""Render the chart's monitoring templates with the real Helm library (helm-python-sdk) and
check custom resources against the real CRDs in ../shared/crds (read there, never copied)."""

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm/sentinels"
CRDS = ROOT.parent / "shared/crds"
RULES_FILE = CHART / "monitoring/rules.yaml"
MONITORING_TEMPLATES = ("metrics-exporter.yaml", "prometheusrule.yaml", "alertmanager-slack.yaml", "dashboards.yaml",
                        "fluent-bit-lua.yaml")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def defaults() -> dict:
    return yaml.safe_load((CHART / "monitoring/values.yaml").read_text())


def _chart_dir(tmp: Path) -> Path:
    """A stand-in chart holding the monitoring parts (helm/sentinels/monitoring/templates/), until
    they are wired into the chart with its labels, image and values schema."""
    out = tmp / "sentinels"
    (out / "templates").mkdir(parents=True)
    (out / "Chart.yaml").write_text("apiVersion: v2\nname: sentinels\nversion: 0.1.0\nappVersion: 0.1.0\n")
    for name in MONITORING_TEMPLATES:
        shutil.copy(CHART / "monitoring" / "templates" / name, out / "templates" / name)
    for sub in ("monitoring", "dashboards", "files"):  # .Files the templates read
        if (CHART / sub).exists():
            shutil.copytree(CHART / sub, out / sub)
    return out


def render(values: dict | None = None) -> list[dict]:
    """Every object the monitoring templates render with these values over the defaults."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the Helm library) is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        chart = helm.Chart.load(str(_chart_dir(Path(tmp))))
        files = chart.render(merge(defaults(), values or {}), name="rel", namespace="sentinels")
    docs = []
    for path, text in files.items():
        if path.rsplit("/", 1)[-1] in MONITORING_TEMPLATES:
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
