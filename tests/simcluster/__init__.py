"""A simulated Kubernetes cluster for end-to-end tests of the Kubernetes backend (see harness.py)."""
