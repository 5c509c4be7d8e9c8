"""The OpenAPI document served at `GET /openapi.json`: the read API and the CloudEvent writes.

Kept next to the routes it describes; a schemathesis contract test runs it against a
live stack, so a status code or a shape not written here fails the build.
"""

from sentinels.domain.placement import CODES
from sentinels.domain.reads import MAX_LIMIT, STATE_FILTERS

ERROR = {"$ref": "#/components/responses/Error"}
# A path the web server cannot route at all (a control character in a job id) gets its plain 404.
NOT_FOUND = {"description": "no such job or path", "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}, "text/plain": {"schema": {"type": "string"}}}}


# a queued job's reason as a code (domain.placement.CODES) and the resource that is short
WAIT_CODE = {"reason_code": {"type": "string", "nullable": True, "enum": [*CODES, None]},
             "short": {"type": "string", "nullable": True}}


def _errors(*codes: int) -> dict:
    return {str(c): NOT_FOUND if c == 404 else ERROR for c in codes}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "job id (10 characters, a-z and 2-7)"}
LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}}
FOLLOW = {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": False}}
NAME = {"type": "string", "maxLength": 200}
AMOUNTS = {"type": "object", "description": "cpu_millis, memory_bytes, gpu, jobs", "additionalProperties": {"type": "integer"}}

DOCUMENT = {
    "openapi": "3.0.3",
    "info": {"title": "sentinels", "version": "1",
             "description": "A priority job queue for ML experiments. Reads are `GET /v1/...`; writes are "
                            "CloudEvents (`io.sentinels.job.submit`, `.cancel`, `.reprioritize`) on `POST /`. "
                            "Every request carries `Authorization: Bearer <token>` unless the stack is single-user."},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/whoami": {"get": {
            "summary": "The identity of the token", "operationId": "whoami",
            "responses": {"200": _json(_ref("Identity"), "who you are"), **_errors(401, 503)}}},
        "/v1/jobs": {"get": {
            "summary": "Jobs, newest first: live ones, then finished ones (paged)", "operationId": "listJobs",
            "parameters": [
                {"name": "owner", "in": "query", "schema": NAME},
                {"name": "team", "in": "query", "schema": NAME},
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATE_FILTERS)}},
                {"name": "sweep", "in": "query", "schema": NAME, "description": "members of one sweep or array"},
                LIMIT,
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[ads][0-9]{1,19}$"},
                 "description": "`next` of the previous page"},
            ],
            "responses": {"200": _json(_ref("JobPage"), "one page of jobs"), **_errors(400, 401, 503)}}},
        "/v1/jobs/{id}": {"get": {
            "summary": "One job: record, queue position, waiting reason, links", "operationId": "getJob",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "the job"), **_errors(400, 401, 404, 503)}}},
        "/v1/jobs/{id}/history": {"get": {
            "summary": "Every state transition; with follow, each one as it happens until the job ends (NDJSON)",
            "operationId": "jobHistory", "parameters": [JOB_ID, FOLLOW],
            "responses": {"200": {"description": "the transitions", "content": {
                "application/json": {"schema": _ref("History")},
                "application/x-ndjson": {"schema": {"type": "string"}}}}, **_errors(400, 401, 404, 503)}}},
        "/v1/jobs/{id}/logs": {"get": {
            "summary": "The job's output (Elasticsearch when configured, else the local file or pod logs), "
                       "streamed; with follow, until the job ends. Remarks (a fallback taken, no output yet) "
                       "come in the X-Sentinels-Note header",
            "operationId": "jobLogs",
            "parameters": [JOB_ID, FOLLOW,
                           {"name": "build", "in": "query", "schema": {"type": "boolean", "default": False},
                            "description": "the image build's output (a Dockerfile job)"},
                           {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000000}},
                           {"name": "since", "in": "query", "schema": {"type": "string", "maxLength": 64},
                            "description": "a duration back from now (10m, 2h) or an ISO time (Elasticsearch only)"},
                           {"name": "attempt", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000000},
                            "description": "the output of this attempt (1, 2, ...; default: the last)"}],
            "responses": {"200": {"description": "log lines", "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 403, 404, 503)}}},
        "/v1/jobs/{id}/usage": {"get": {
            "summary": "CPU, memory and GPU use of one job, now and at its peak (also after it ended)",
            "operationId": "jobUsage", "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Usage"), "the job's usage (empty when never sampled)"),
                          **_errors(400, 401, 404, 503)}}},
        "/v1/usage": {"get": {
            "summary": "CPU, memory and GPU use of every running job (`sentinels top`)", "operationId": "usage",
            "responses": {"200": _json(_ref("Usage"), "running jobs' usage"), **_errors(400, 401, 503)}}},
        "/v1/queue": {"get": {
            "summary": "The next jobs to run, in order, with positions and reasons", "operationId": "queue",
            "parameters": [LIMIT, {"name": "class", "in": "query", "schema": NAME}],
            "responses": {"200": _json(_ref("Queue"), "the queue head"), **_errors(400, 401, 503)}}},
        "/v1/share": {"get": {
            "summary": "How teams share the cluster: each team's (and user's) decayed usage, what it holds, its nominal "
                       "quota, how much it may borrow and how much it borrows now", "operationId": "share",
            "responses": {"200": _json(_ref("Share"), "usage, quotas and borrowing"), **_errors(400, 401, 503)}}},
        "/": {"post": {
            "summary": "A write: a binary-mode CloudEvent (submit, cancel, reprioritize)", "operationId": "write",
            "parameters": [
                {"name": "ce-specversion", "in": "header", "required": True, "schema": {"type": "string", "enum": ["1.0"]}},
                {"name": "ce-type", "in": "header", "required": True, "schema": {"type": "string", "enum": [
                    "io.sentinels.job.submit", "io.sentinels.job.cancel", "io.sentinels.job.reprioritize"]}},
                {"name": "ce-source", "in": "header", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "ce-id", "in": "header", "required": True, "schema": {"type": "string", "minLength": 1}},
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "description": "submit: {spec, sweep?, array?}; cancel: {job}; "
                                                 "reprioritize: {job, priority}"}}}},
            "responses": {"200": _json({"type": "object"}, "done (or already done: retries are safe)"),
                          "201": _json({"type": "object"}, "created"),
                          **_errors(400, 401, 403, 404, 409, 413, 415, 503)}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": _json(_ref("Error"), "a one-line error")},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "field": {"type": "string"}}},
            "Identity": {"type": "object", "required": ["user"], "properties": {
                "user": {"type": "string"}, "team": {"type": "string", "nullable": True},
                "role": {"type": "string"}, "single_user": {"type": "boolean"}}},
            "Row": {"type": "object", "required": ["id", "state", "owner"], "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "state": {"type": "string"},
                "priority": {"type": "string"}, "owner": {"type": "string"},
                "team": {"type": "string", "nullable": True}, "reason": {"type": "string", "nullable": True},
                **WAIT_CODE, "attempts": {"type": "integer"}, "sweep": {"type": "string"},
                "submitted_at": {"type": "string"}, "updated_at": {"type": "string"}}},
            "JobPage": {"type": "object", "required": ["jobs", "next"], "properties": {
                "jobs": {"type": "array", "items": _ref("Row")},
                "next": {"type": "string", "nullable": True, "description": "cursor of the next page"}}},
            "Job": {"type": "object", "required": ["id", "state", "owner", "spec"], "properties": {
                "id": {"type": "string"}, "state": {"type": "string"}, "owner": {"type": "string"},
                "spec": {"type": "object"}, "position": {"type": "integer", "nullable": True}, **WAIT_CODE,
                "links": {"type": "object"}, "hidden": {"type": "string"}}},
            "History": {"type": "object", "required": ["job", "history"], "properties": {
                "job": {"type": "string"}, "history": {"type": "array", "items": {"type": "object"}}}},
            "Usage": {"type": "object", "required": ["jobs"], "properties": {
                "jobs": {"type": "array", "items": {"type": "object", "properties": {
                    "job": {"type": "string"}, "running": {"type": "boolean"},
                    "cpu_cores": {"type": "number"}, "peak_cpu_cores": {"type": "number"},
                    "memory_bytes": {"type": "number"}, "peak_memory_bytes": {"type": "number"},
                    "gpu_util": {"type": "number", "nullable": True},
                    "gpu_memory_bytes": {"type": "number"}, "peak_gpu_memory_bytes": {"type": "number"},
                    "cpu_seconds": {"type": "number"}, "gpu_seconds": {"type": "number"}}}}}},
            "Queue": {"type": "object", "required": ["total", "by_class", "jobs"], "properties": {
                "total": {"type": "integer"}, "by_class": {"type": "object"},
                "jobs": {"type": "array", "items": _ref("QueueRow")}}},
            "QueueRow": {"type": "object", "required": ["position", "id", "class", "owner", "share"], "properties": {
                "position": {"type": "integer"}, "id": {"type": "string"}, "name": {"type": "string"},
                "class": {"type": "string"}, "owner": {"type": "string"}, "team": {"type": "string", "nullable": True},
                "submitted_at": {"type": "string"}, "resources": {"type": "object"}, "reason": {"type": "string", "nullable": True},
                "share": {"type": "object", "nullable": True, "required": ["by", "key", "usage", "fraction"],
                          "description": "the fair share that ordered it within its class (null: fair share off, or no team)",
                          "properties": {"by": {"type": "string", "enum": ["team", "user"]}, "key": {"type": "string"},
                                         "usage": {"type": "number"}, "fraction": {"type": "number"}}}}},
            "Share": {"type": "object", "required": ["fair_share", "quotas", "preemption", "rows"], "properties": {
                "fair_share": {"type": "object", "properties": {"by": {"type": "string", "enum": ["team", "user", "off"]},
                                                                "half_life_seconds": {"type": "number"}}},
                "quotas": {"type": "boolean"}, "preemption": {"type": "array", "items": {"type": "string"}},
                "rows": {"type": "array", "items": _ref("ShareRow")}}},
            "ShareRow": {"type": "object", "required": ["kind", "name", "usage", "share", "holds", "nominal",
                                                        "borrowing_limit", "borrowed"], "properties": {
                "kind": {"type": "string", "enum": ["team", "user"]}, "name": {"type": "string"},
                "usage": {"type": "number", "nullable": True, "description": "decayed CPU/GPU-seconds (weighted)"},
                "share": {"type": "number", "nullable": True, "description": "fraction of all usage"},
                "holds": AMOUNTS, "nominal": {**AMOUNTS, "nullable": True},
                "borrowing_limit": {**AMOUNTS, "nullable": True}, "borrowed": {**AMOUNTS, "nullable": True}}},
        },
    },
}
