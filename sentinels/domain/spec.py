"""The job spec: a whitelist of fields, each validated with a message naming it.

`validate(raw, limits)` turns untrusted YAML/JSON into a normalised dict or raises
`InvalidSpec`. Nothing outside this whitelist can reach a pod, so no spec can ask for
privilege (hostPath, hostNetwork, service-account tokens).
"""

import copy
import json
import math
import posixpath
import re
from dataclasses import dataclass, field

from . import duration, quantity
from .errors import InvalidSpec

MAX_SPEC_BYTES = 64 * 1024
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Docker reference grammar: [registry[:port]/]path[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9-]+:[0-9]+|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+:[0-9]+|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
IMAGE_REF = re.compile(
    rf"^(?:{_REGISTRY}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
NOTIFY_STATES = ("succeeded", "failed", "cancelled", "preempted")  # preempted: stopped and requeued for another job
NOTIFY_DEFAULT = ("succeeded", "failed", "preempted")
FIELDS = (
    "name", "image", "command", "args", "env", "resources", "priority", "experiment", "params",
    "data", "outputs", "timeout", "retries", "node_selector", "labels", "notify", "preemptible",
)


@dataclass(frozen=True)
class Limits:
    """Per-job maximums and the data roots, from the server configuration."""

    cpu_millis: int = 64_000
    memory_bytes: int = 512 * 2**30
    gpu: int = 8
    timeout_seconds: int = 7 * 86400
    retries: int = 10
    data_roots: tuple[str, ...] = ("/datasets",)
    default_cpu_millis: int = 1000
    default_memory_bytes: int = 2**30
    default_outputs: str = "/outputs"
    command_required: bool = False  # the local process runtime: no image entrypoint to fall back on


@dataclass
class _Checker:
    raw: dict
    limits: Limits
    out: dict = field(default_factory=dict)

    def typed(self, key, types, what):
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise InvalidSpec(f"{key}: expected {what}, got {type(value).__name__} {value!r}", key)
        return value


def _str_list(value, key):
    if not isinstance(value, list):
        raise InvalidSpec(f"{key}: expected a list of strings, got {type(value).__name__}", key)
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise InvalidSpec(f"{key}[{i}]: expected a string, got {type(item).__name__}", key)
        out.append(str(item))
    return out


def _scalar_map(value, key, key_ok=None, key_what="", value_re=None):
    if not isinstance(value, dict):
        raise InvalidSpec(f"{key}: expected a mapping, got {type(value).__name__}", key)
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or (key_ok and not key_ok(k)):
            raise InvalidSpec(f"{key}: {k!r} is not {key_what or 'a valid key'}", key)
        if v is None or isinstance(v, (dict, list)):
            raise InvalidSpec(f"{key}.{k}: expected a scalar value, got {type(v).__name__}", key)
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if value_re and not (value_re.match(text) and len(text) <= 63):
            raise InvalidSpec(f"{key}.{k}: {text!r} is not a valid label value", key)
        out[k] = text
    return out


def label_value(text) -> str:
    """Make any text a valid label value: <= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends
    (an owner such as alice@example.com becomes alice-example.com); "" when nothing is left."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text or ""))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _label_key(k: str) -> bool:
    prefix, _, name = k.rpartition("/")
    if len(name) > 63 or not LABEL_NAME.match(name):
        return False
    return not prefix or (len(prefix) <= 253 and all(DNS1123_LABEL.match(p) for p in prefix.split(".")))


def _path(value, key, roots=None):
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{key}: expected an absolute path", key)
    if not value.startswith("/"):
        raise InvalidSpec(f"{key}: {value!r} must be an absolute path", key)
    if ".." in value.split("/"):
        raise InvalidSpec(f"{key}: {value!r} must not contain '..'", key)
    norm = posixpath.normpath(value)
    if roots is not None and not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
        raise InvalidSpec(f"{key}: {value!r} is outside the data roots ({', '.join(roots)})", key)
    return norm


def default_name(image: str) -> str:
    """Derive a DNS-1123 name from an image reference: ghcr.io/acme/resnet:1.4 -> resnet."""
    base = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:50].strip("-")
    return name or "job"


def _resources(value, limits: Limits) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidSpec(f"resources: expected a mapping, got {type(value).__name__}", "resources")
    unknown = set(value) - {"cpu", "memory", "gpu"}
    if unknown:
        raise InvalidSpec(f"resources: unknown key(s) {', '.join(sorted(map(str, unknown)))} (allowed: cpu, memory, gpu)", "resources")
    cpu = limits.default_cpu_millis if value.get("cpu") is None else quantity.cpu_millis(value["cpu"])
    mem = limits.default_memory_bytes if value.get("memory") is None else quantity.memory_bytes(value["memory"])
    gpu_raw = 0 if value.get("gpu") is None else value["gpu"]
    if isinstance(gpu_raw, bool) or not (isinstance(gpu_raw, int) and 0 <= gpu_raw < 10_000
                                         or isinstance(gpu_raw, str) and re.fullmatch(r"[0-9]{1,4}", gpu_raw)):
        raise InvalidSpec(f"resources.gpu: expected a whole number of GPUs, got {gpu_raw!r}", "resources.gpu")
    gpu = int(gpu_raw)
    if cpu <= 0:
        raise InvalidSpec("resources.cpu: must be more than 0", "resources.cpu")
    if mem <= 0:
        raise InvalidSpec("resources.memory: must be more than 0", "resources.memory")
    for key, got, cap, fmt in (
        ("cpu", cpu, limits.cpu_millis, quantity.format_cpu),
        ("memory", mem, limits.memory_bytes, quantity.format_memory),
        ("gpu", gpu, limits.gpu, str),
    ):
        if got > cap:
            raise InvalidSpec(f"resources.{key}: {fmt(got)} is more than the per-job maximum {fmt(cap)}", f"resources.{key}")
    return {"cpu": quantity.format_cpu(cpu), "memory": quantity.format_memory(mem), "gpu": gpu,
            "cpu_millis": cpu, "memory_bytes": mem}


def _notify(value) -> dict:
    if not isinstance(value, dict):
        raise InvalidSpec(f"notify: expected a mapping, got {type(value).__name__}", "notify")
    unknown = set(value) - {"channel", "on"}
    if unknown:
        raise InvalidSpec(f"notify: unknown key(s) {', '.join(sorted(map(str, unknown)))} (allowed: channel, on)", "notify")
    out: dict[str, object] = {}
    if value.get("channel") is not None:
        ch = value["channel"]
        if not isinstance(ch, str) or not re.match(r"^#?[A-Za-z0-9._-]{1,80}$", ch):
            raise InvalidSpec(f"notify.channel: {ch!r} is not a Slack channel name", "notify.channel")
        out["channel"] = ch
    on = value.get("on", list(NOTIFY_DEFAULT))
    if isinstance(on, str):
        on = [on]
    if not isinstance(on, list) or any(s not in NOTIFY_STATES for s in on):
        raise InvalidSpec(f"notify.on: expected a list of {', '.join(NOTIFY_STATES)}, got {on!r}", "notify.on")
    out["on"] = list(on)
    return out


MAX_ARG_BYTES = 131072  # Linux MAX_ARG_STRLEN: the longest single argument or environment string
# Outputs go to a directory the job writes; these would hand it the system's own.
SYSTEM_PATHS = ("/", "/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/lib", "/lib64", "/boot", "/run",
                "/var/run", "/root")


def _no_nul(value, where: str) -> None:
    """A NUL byte cannot reach a process (exec refuses it): refuse it here, naming the field.
    Iterative, so a deeply nested value cannot exhaust the stack."""
    todo = [(value, where)]
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidSpec(f"{path}: NUL characters are not allowed", where)
        elif isinstance(item, dict):
            todo.extend((k, path) for k in item)
            todo.extend((v, f"{path}.{k}") for k, v in item.items())
        elif isinstance(item, list):
            todo.extend((v, f"{path}[{i}]") for i, v in enumerate(item))


def _mapping_or_empty(raw: dict, key: str):
    """A mapping field: absent or null means empty; any other falsy value (false, [], 0) is an error."""
    value = raw.get(key)
    return {} if value is None else value


def _exec_sizes(out: dict) -> None:
    for key in ("command", "args"):
        for i, arg in enumerate(out[key]):
            size = len(arg.encode())
            if size >= MAX_ARG_BYTES:
                raise InvalidSpec(f"{key}[{i}]: {size} bytes is over the operating system's limit for one "
                                  f"argument ({MAX_ARG_BYTES - 1} bytes)", key)
    for k, v in out["env"].items():
        size = len(k.encode()) + 1 + len(v.encode())
        if size >= MAX_ARG_BYTES:
            raise InvalidSpec(f"env.{k}: {size} bytes is over the operating system's limit for one variable "
                              f"({MAX_ARG_BYTES - 1} bytes)", "env")


def _outputs(value) -> str:
    path = _path(value, "outputs")
    if any(path == p or path.startswith(p + "/") for p in SYSTEM_PATHS if p != "/") or path == "/":
        raise InvalidSpec(f"outputs: {value!r} is a system directory; choose a directory of its own such as /outputs",
                          "outputs")
    return path
def _check_value(value, where: str, depth: int = 0) -> None:
    """JSON data only (what YAML and JSON both carry), at most 8 levels deep."""
    if depth > 8:
        raise InvalidSpec(f"{where}: nested more than 8 levels deep", "params")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSpec(f"{where}: {value!r} is not a finite number", "params")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str) or not k:
                raise InvalidSpec(f"{where}: key {k!r} must be a non-empty string", "params")
            _check_value(item, f"{where}.{k}", depth + 1)
        return
    raise InvalidSpec(f"{where}: expected a number, string, boolean, list or mapping, got {type(value).__name__}", "params")


def _params(value) -> dict:
    """Hyper-parameters keep their types and nesting; MLflow gets them flattened (`flat_params`)."""
    if not isinstance(value, dict):
        raise InvalidSpec(f"params: expected a mapping, got {type(value).__name__}", "params")
    _check_value(value, "params")
    too_long = [k for k, v in flat_params(value).items() if len(k) > 250 or len(v) > 6000]
    if too_long:
        raise InvalidSpec(f"params.{too_long[0]}: name or value too long for MLflow", "params")
    return copy.deepcopy(value)


def with_params(spec: dict, params) -> dict:
    """A validated spec with other params (a sweep member's), checked as `validate` checks them:
    a sweep of a thousand validates its spec once, then only each member's values."""
    _no_nul(params, "params")
    return dict(spec, params=_params(params))


def param_text(value) -> str:
    """One param value as MLflow stores it (a string): 0.5 -> "0.5", true -> "true", [1, 2] -> "[1, 2]"."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, sort_keys=False)


def flat_params(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow's flat string params: {opt: {lr: 0.1}} -> {"opt.lr": "0.1"}."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = param_text(value)
    return out


def job_config(raw: dict, spec: dict) -> dict:
    """What the job reads at SENTINELS_CONFIG: its configuration as the user wrote it (numbers
    stay numbers, nesting kept, keys in their order), with the values sentinels resolved filled
    in: name, priority, experiment, resources (as quantities) and outputs."""
    out = copy.deepcopy(raw)
    res = spec["resources"]
    out.update(name=spec["name"], priority=spec["priority"], experiment=spec["experiment"],
               resources={"cpu": res["cpu"], "memory": res["memory"], "gpu": res["gpu"]}, outputs=spec["outputs"])
    return out


def config_of(record: dict) -> dict:
    """The file a job gets at SENTINELS_CONFIG (records from before `config` existed: the spec)."""
    return record.get("config") or record["spec"]


def validate(raw, limits: Limits = Limits()) -> dict:
    """Return the normalised spec; raise InvalidSpec naming the first bad field."""
    if not isinstance(raw, dict):
        raise InvalidSpec(f"the job spec must be a mapping of fields, got {type(raw).__name__}")
    for key, value in raw.items():
        _no_nul(value, str(key))
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise InvalidSpec(f"unknown field(s): {', '.join(map(str, unknown))} (allowed: {', '.join(FIELDS)})", str(unknown[0]))
    c = _Checker(raw, limits)
    out = c.out
    image = c.typed("image", (str,), "an image reference such as ghcr.io/acme/resnet:1.4")
    if not image:
        raise InvalidSpec("image: required (an image reference such as ghcr.io/acme/resnet:1.4)", "image")
    if len(image) > 512 or not IMAGE_REF.match(image):
        raise InvalidSpec(f"image: {image!r} is not a valid image reference", "image")
    out["image"] = image
    name = c.typed("name", (str,), "a DNS-1123 label") or default_name(image)
    if len(name) > 50 or not DNS1123_LABEL.match(name):
        raise InvalidSpec(f"name: {name!r} is not a DNS-1123 label of at most 50 characters "
                          "(lowercase letters, digits and '-', starting and ending alphanumeric)", "name")
    out["name"] = name
    out["command"] = _str_list(raw["command"], "command") if raw.get("command") is not None else []
    out["args"] = _str_list(raw["args"], "args") if raw.get("args") is not None else []
    if limits.command_required and not out["command"]:
        raise InvalidSpec("command: required here (the local process runtime runs the command on this machine, "
                          "with no image entrypoint to fall back on); give it after --, e.g. "
                          "`sentinels submit IMAGE -- python train.py`", "command")
    env = _scalar_map(_mapping_or_empty(raw, "env"), "env", ENV_NAME.match, "an environment variable name")
    reserved = [k for k in env if k.startswith("SENTINELS_")]
    if reserved:
        raise InvalidSpec(f"env: {reserved[0]} is reserved (SENTINELS_* variables are set by sentinels)", "env")
    out["env"] = env
    out["resources"] = _resources(raw.get("resources"), limits)
    priority = c.typed("priority", (str,), "a priority class name")
    out["priority"] = priority
    experiment = c.typed("experiment", (str,), "an MLflow experiment name") or name
    if len(experiment) > 250 or not experiment.strip():
        raise InvalidSpec("experiment: must be 1 to 250 characters", "experiment")
    out["experiment"] = experiment
    out["params"] = _params(_mapping_or_empty(raw, "params"))
    out["data"] = _path(raw["data"], "data", limits.data_roots) if raw.get("data") is not None else None
    out["outputs"] = _outputs(raw["outputs"]) if raw.get("outputs") is not None else limits.default_outputs
    if raw.get("timeout") is not None:
        t = duration.seconds(raw["timeout"])
        if t > limits.timeout_seconds:
            raise InvalidSpec(f"timeout: {duration.human(t)} is more than the maximum {duration.human(limits.timeout_seconds)}", "timeout")
        out["timeout_seconds"] = t
    else:
        out["timeout_seconds"] = None
    retries = c.typed("retries", (int,), "a whole number")
    retries = 0 if retries is None else retries
    if not 0 <= retries <= limits.retries:
        raise InvalidSpec(f"retries: must be between 0 and {limits.retries}, got {retries}", "retries")
    out["retries"] = retries
    out["node_selector"] = _scalar_map(_mapping_or_empty(raw, "node_selector"), "node_selector", _label_key, "a label key", LABEL_VALUE)
    labels = _scalar_map(_mapping_or_empty(raw, "labels"), "labels", _label_key, "a label key", LABEL_VALUE)
    if any(k.startswith("sentinels.io/") or k.startswith("app.kubernetes.io/") for k in labels):
        raise InvalidSpec("labels: sentinels.io/ and app.kubernetes.io/ labels are set by sentinels", "labels")
    out["labels"] = labels
    out["notify"] = _notify(raw["notify"]) if raw.get("notify") is not None else None
    preemptible = c.typed("preemptible", (bool,), "true or false")
    out["preemptible"] = True if preemptible is None else preemptible
    _exec_sizes(out)
    return out
