"""on_job_event: what Kubernetes (or the local executor) says -> the job state machine."""
