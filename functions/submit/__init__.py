"""submit: the only write entry point (job.submit / job.cancel / job.reprioritize)."""
