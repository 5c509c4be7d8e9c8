"""Render records as a table, JSON or YAML (`-o table|json|yaml`)."""

import json
import sys

FORMATS = ("table", "json", "yaml")


def emit(data, fmt: str, columns: list[tuple[str, str]] | None = None, rows: list[dict] | None = None) -> None:
    """Print `data` as JSON/YAML, or `rows` (default: data) as a table with `columns`."""
    if fmt == "json":
        print(json.dumps(data, indent=2, default=str))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    else:
        table(rows if rows is not None else data, columns or [])


def table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[str(r.get(key, "") if r.get(key) is not None else "") for _, key in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    out = sys.stdout
    out.write("  ".join(h.ljust(w) for (h, _), w in zip(columns, widths)).rstrip() + "\n")
    for c in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() + "\n")


def pairs(items: list[tuple[str, object]]) -> None:
    """A vertical key: value listing for `status`."""
    width = max(len(k) for k, _ in items)
    for k, v in items:
        if v not in (None, "", [], {}):
            print(f"{k + ':':<{width + 1}} {v}")
