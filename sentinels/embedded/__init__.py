"""The embedded default: one machine, no Kubernetes (`sentinels up`)."""
