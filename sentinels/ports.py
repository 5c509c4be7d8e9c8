"""The narrow ports between the functions and the outside world.

Each port has a real adapter and an in-memory one (`sentinels.adapters`). Functions
depend on these protocols only, so a newcomer can read them as the architecture's seams.
"""

from typing import Callable, Optional, Protocol


class Conflict(Exception):
    """A compare-and-set lost the race or a create found the key already there."""


class JobStore(Protocol):
    """Job records (KV `sentinels_jobs`), updated only by compare-and-set."""

    async def get(self, job_id: str) -> Optional[tuple[dict, int]]: ...
    async def create(self, record: dict) -> int: ...  # raises Conflict if it exists
    async def update(self, record: dict, revision: int) -> int: ...  # raises Conflict
    async def mutate(self, job_id: str, fn: Callable[[dict], Optional[dict]],
                     known: Optional[tuple[dict, int]] = None) -> Optional[tuple[dict, dict]]: ...
    # `known`: the (record, revision) the caller has just read, tried first (one read fewer)
    async def all(self) -> list[dict]: ...  # every record: tests and tools only, never a request path
    async def active(self) -> list[dict]: ...  # live records, from the active index
    async def listing(self, kind: str, owner: Optional[str] = None, team: Optional[str] = None,
                      sweep: Optional[str] = None, before: Optional[int] = None,
                      limit: int = 50) -> tuple[list[str], Optional[int], int]: ...
    # ids of the `active`, `done` or `sweep` list, newest first: (ids, next cursor, total)


class JobQueue(Protocol):
    """Waiting jobs (stream `SENTINELS_QUEUE`), one subject per priority class."""

    async def enqueue(self, entry: dict, msg_id: str, front: bool = False) -> int: ...  # the stream sequence
    async def remove(self, seq: int) -> bool: ...
    async def heads(self, classes: list[str], limit: int) -> list[tuple[int, dict]]: ...
    async def counts(self) -> dict[str, int]: ...
    async def oldest(self) -> dict[str, str]: ...  # class -> submission time of its longest-waiting job
    async def position(self, classes: list[str], klass: str, seq: int, front: bool = False) -> Optional[int]: ...


class History(Protocol):
    """Every state transition (stream `SENTINELS_HISTORY`)."""

    async def append(self, entry: dict, msg_id: str, first: bool = False) -> None: ...
    async def of(self, job_id: str) -> list[dict]: ...


class Board(Protocol):
    """Small shared documents (KV `sentinels_state`), e.g. why each waiting job waits."""

    async def get(self, key: str) -> Optional[dict]: ...
    async def put(self, key: str, value: dict) -> None: ...
    async def read(self, key: str) -> tuple[Optional[dict], Optional[int]]: ...  # (document, revision)
    async def swap(self, key: str, value: dict, revision: Optional[int]) -> bool: ...  # False: lost the race


class SentLog(Protocol):
    """Which (event, channel) pairs the alert function sent (KV `sentinels_alerts`), claimed
    before sending so that concurrent deliveries of one event send one message:
    claim, send, then done (or release when the send failed and may be retried)."""

    async def claim(self, key: str) -> bool: ...  # True: this delivery sends; False: sent or being sent
    async def done(self, key: str) -> None: ...
    async def release(self, key: str) -> None: ...


class Notifier(Protocol):
    """Where alerts go: Slack (bot token or webhook) or the log (`adapters.slack`).

    `send` returns the channel that got the message (the default one when the asked-for
    channel was refused); it raises Unavailable (retry later), ConfigError (credentials
    rejected) or SendFailed (this message refused for good).
    """

    per_channel: bool  # False: a webhook posts to its own channel only

    def describe(self) -> str: ...
    def check(self) -> None: ...
    def send(self, channel: str, message: dict) -> str: ...


class EventSink(Protocol):
    """Where a function sends follow-up CloudEvents (broker ingress, K_SINK or the router)."""

    async def emit(self, event: dict) -> None: ...


class LogSource(Protocol):
    """Where a job's output is read: the local log file, the pod log API, Elasticsearch.

    `lines` gives the last `tail` lines, or with `tail` None the first lines (perhaps only a
    first page), and a position; `more` gives what comes after a position and the new
    position, so a reader pages through the output and follows it. `since` (ISO time) keeps
    lines from then on where the source knows each line's time. A source appends one-line
    remarks for the reader to `notes` (a fallback taken, a filter it cannot apply).
    """

    async def lines(self, record: dict, tail: Optional[int], since: Optional[str] = None,
                    notes: Optional[list] = None) -> tuple[list[str], object]: ...
    async def more(self, record: dict, position: object) -> tuple[list[str], object]: ...


class UsageSource(Protocol):
    """Jobs' CPU, memory and GPU use (now and peak): the executor's samples on one machine,
    the Prometheus HTTP API on Kubernetes. `job_id` None: every running job."""

    async def usage(self, job_id: Optional[str]) -> list[dict]: ...


class PeakUsage(Protocol):
    """What a job that has just ended used at most (`peak_memory_bytes`, `peak_cpu_cores`,
    `cpu_seconds`, GPU peaks; keys of `domain.usage`), for its MLflow run: Prometheus on
    Kubernetes (on one machine the executor's sampler logs them itself). Raises Unavailable."""

    async def peaks(self, job_id: str, seconds: float) -> dict: ...


class Cluster(Protocol):
    """Where jobs run: Kubernetes (`adapters.kubernetes`) or this machine (`adapters.local`).

    Every call is idempotent: launching a job that already runs, or stopping one that is
    gone, succeeds. Job objects carry the label `sentinels.io/job-id`.
    """

    async def nodes(self) -> list:  # [domain.placement.Node] with free capacity
        ...

    async def launch(self, record: dict, extra_env: dict) -> None:  # create the Job / start the process
        ...

    async def stop(self, record: dict, why: Optional[str] = None) -> None:
        """Delete the Job / stop the process (SIGTERM, then SIGKILL after the grace period).
        `why` (a preemption) is told to the job first: a file next to its outputs locally, a
        DisruptionTarget condition on its pod on Kubernetes."""
        ...

    async def active(self) -> dict[str, str]:  # job id -> Job name, for what the cluster runs now
        ...

    async def build(self, record: dict) -> None:  # start the build Job of a Dockerfile submit (idempotent)
        ...

    async def logs(self, record: dict, tail: Optional[int] = None) -> list[str]:
        ...

    async def jobs(self, job_ids: list[str]) -> dict[str, dict]:  # job id -> its current Job object
        ...  # (Kubernetes-shaped, with status); ids the cluster has no Job for are left out
    async def last_end(self, record: dict) -> Optional[dict]:  # {"reason", "exit_code"} of its newest failed pod
        ...


class Placeholders(Protocol):
    """Placeholder workloads that show queued demand to a cluster autoscaler
    (`adapters.kube_placeholders`; see `domain.demand`)."""

    async def sync(self, wanted: list[dict]) -> dict[str, int]:  # make the placeholder
        ...  # Deployments exactly `wanted`: {"created", "updated", "deleted"} counts


class Tracker(Protocol):
    """Experiment tracking (MLflow): one run per job, brought up to date from the record.

    `sync` performs what `domain.tracking.pending_ops(record)` says is owed and returns the
    updated record (None when nothing was owed); it raises Unavailable when MLflow does
    not answer, so the caller can retry later without ever holding back a transition.
    """

    def start_run(self, record: dict) -> dict:  # {"run_id", "experiment_id", "url"}
        ...

    def sync(self, record: dict, outputs_dir: Optional[str] = None) -> Optional[dict]:
        ...

    def warm(self) -> None:  # open the store ahead of the first job
        ...


class Meter(Protocol):
    """Counts of things that happen inside a function (Slack sends, scheduling passes,
    handler errors), told to the always-on exporter: functions scale to zero, so their
    own in-process counters would vanish. Best effort: a lost count never fails work."""

    async def count(self, what: str, label: str = "", value: float = 1.0) -> None: ...
