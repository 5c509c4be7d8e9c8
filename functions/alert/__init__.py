"""alert: tells Slack when a job ends and when the cluster stays full (and recovers)."""
