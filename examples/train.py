"""A small real experiment to try sentinels with: logistic regression in numpy.

It shows what a job sees: hyper-parameters under `params:` in the YAML file at
`SENTINELS_CONFIG`, the MLflow run the platform created (`MLFLOW_TRACKING_URI`,
`MLFLOW_RUN_ID`), and `SENTINELS_OUTPUTS`, the directory stored as the run's artifacts.
Run by hand it uses defaults, writes to ./outputs and skips MLflow unless
`MLFLOW_TRACKING_URI` is set. The data is generated with a fixed seed; it takes seconds.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

DEFAULTS = {"lr": 0.5, "epochs": 40, "n": 2000, "features": 5, "seed": 7}
TYPES = {"lr": (int, float), "epochs": int, "n": int, "features": int, "seed": int}  # what each must already be


def load_params(path: str | None) -> dict:
    """DEFAULTS overridden by `params:` in the job's configuration; a bad value stops with a message.

    sentinels hands the configuration over as the user wrote it, so numbers arrive as
    numbers: nothing is cast here, a value of the wrong type is refused."""
    params = dict(DEFAULTS)
    if not path:
        return params
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"train.py: cannot read SENTINELS_CONFIG {path}: {e}")
    try:
        import yaml
    except ImportError:
        print(f"pyyaml is not installed: ignoring {path}, using defaults", flush=True)
        return params
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        sys.exit(f"train.py: SENTINELS_CONFIG {path} is not valid YAML: {str(e).splitlines()[0]}")
    given = (spec.get("params") if isinstance(spec, dict) else None) or {}
    if not isinstance(given, dict):
        sys.exit(f"train.py: params in {path} must be a mapping, got {type(given).__name__}")
    for key, value in given.items():
        if key not in TYPES:
            continue  # other params are the experiment's business, still logged by the platform
        if isinstance(value, bool) or not isinstance(value, TYPES[key]):
            sys.exit(f"train.py: params.{key} must be a {'float' if key == 'lr' else 'whole number'}, got {value!r}")
        params[key] = value
    if params["lr"] <= 0 or params["epochs"] < 1 or params["n"] < 10 or params["features"] < 1:
        sys.exit("train.py: need lr > 0, epochs >= 1, n >= 10, features >= 1")
    return params


def make_data(n: int, features: int, seed: int):
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=features)
    x = rng.normal(size=(n, features))
    y = (x @ true_w + 0.5 * rng.normal(size=n) > 0).astype(float)
    split = int(n * 0.8)
    return (x[:split], y[:split]), (x[split:], y[split:])


def loss_and_accuracy(w, b, x, y):
    p = 1 / (1 + np.exp(-(x @ w + b)))
    eps = 1e-12
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    return loss, float(np.mean((p > 0.5) == y)), p


class Tracking:
    """Logs to the run the platform created; training goes on if MLflow is absent or down."""

    def __init__(self):
        self.mlflow = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            import mlflow

            mlflow.start_run(run_id=os.environ.get("MLFLOW_RUN_ID") or None)
            self.mlflow = mlflow
            print(f"logging to MLflow run {mlflow.active_run().info.run_id}", flush=True)
        except Exception as e:
            print(f"MLflow unavailable, training without it: {str(e).splitlines()[0] if str(e) else e}", flush=True)

    def log(self, metrics: dict, step: int):
        if self.mlflow is None:
            return
        try:
            self.mlflow.log_metrics(metrics, step=step)
        except Exception as e:
            print(f"MLflow stopped answering, training without it: {str(e).splitlines()[0]}", flush=True)
            self.mlflow = None


def main() -> int:
    params = load_params(os.environ.get("SENTINELS_CONFIG"))
    outputs = Path(os.environ.get("SENTINELS_OUTPUTS") or "outputs")
    print(f"params: {json.dumps(params)}", flush=True)
    (x, y), (x_test, y_test) = make_data(params["n"], params["features"], params["seed"])
    w, b = np.zeros(params["features"]), 0.0
    tracking = Tracking()
    for epoch in range(1, params["epochs"] + 1):
        loss, accuracy, p = loss_and_accuracy(w, b, x, y)
        w -= params["lr"] * (x.T @ (p - y)) / len(y)
        b -= params["lr"] * float(np.mean(p - y))
        test_loss, test_accuracy, _ = loss_and_accuracy(w, b, x_test, y_test)
        tracking.log({"loss": loss, "accuracy": accuracy, "test_loss": test_loss, "test_accuracy": test_accuracy},
                     step=epoch)
        print(f"epoch {epoch}/{params['epochs']} loss={loss:.4f} accuracy={accuracy:.3f} "
              f"test_accuracy={test_accuracy:.3f}", flush=True)
    summary = {"epochs": params["epochs"], "final_loss": test_loss, "final_accuracy": test_accuracy,
               "train_accuracy": accuracy}
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "model.json").write_text(json.dumps({"weights": w.tolist(), "bias": b, "params": params}, indent=2))
    (outputs / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {outputs / 'model.json'} and {outputs / 'metrics.json'}", flush=True)
    if tracking.mlflow is not None:
        tracking.mlflow.end_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
