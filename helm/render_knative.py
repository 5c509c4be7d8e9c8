"""Render knative/ from the chart, so the two cannot drift.

The chart (helm/sentinels) is the source: `knative/*.yaml` is what it renders for release
"sentinels" in namespace "sentinels" with the Knative objects forced on, the Knative
install, NATS users, the monitoring pieces and the helm test left out, minus Helm's own labels. The embedded
router of `sentinels up` reads its trigger table from knative/triggers.yaml, i.e. from
the chart's files/routes.yaml. tests/test_knative_manifests.py fails when knative/ is
not what this script writes.

    python helm/render_knative.py            # rewrite knative/
    python helm/render_knative.py --check    # exit 1 when knative/ differs
"""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "sentinels"
OUT = ROOT / "knative"
VALUES = {"knative": {"objects": True, "install": False}, "natsAuth": {"enabled": False},
          "test": {"enabled": False},  # and the monitoring pieces: knative/ is the Knative path only
          "metrics": {"enabled": False}, "alerts": {"enabled": False}, "dashboards": {"enabled": False},
          "logs": {"fluentBitFilter": {"enabled": False}}}
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HEADER = ("# Generated from helm/sentinels (templates/{template}) by `python helm/render_knative.py`;\n"
          "# edit the chart, then run it. Release \"sentinels\" in namespace \"sentinels\": NATS at\n"
          "# sentinels-nats, MLflow at sentinels-mlflow (what the chart's dependencies create).\n")


def render() -> dict[str, str]:
    """knative/ file name -> content."""
    import helm_python
    from helm_python import _native

    chart = helm_python.Chart.load(str(CHART))  # a fresh handle: render mutates it
    opts = {"name": "sentinels", "namespace": "sentinels", "is_install": True}
    rendered = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(VALUES), json.dumps(opts)))
    files = {}
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml") or "/tests/" in path:
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        if not docs:
            continue
        for d in docs:
            labels = d["metadata"].get("labels", {})
            for key in HELM_ONLY_LABELS:
                labels.pop(key, None)
        template = path.split("/templates/", 1)[1]
        body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)
        files[template] = HEADER.format(template=template) + "---\n" + body
    return files


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        current = {p.name: p.read_text() for p in OUT.glob("*.yaml")}
        if current != files:
            print("knative/ differs from the chart: run python helm/render_knative.py", file=sys.stderr)
            return 1
        return 0
    for stale in OUT.glob("*.yaml"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {', '.join(sorted(files))} to knative/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
