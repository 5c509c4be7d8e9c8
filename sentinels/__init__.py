"""sentinels: a priority job queue for ML experiments on Kubernetes or one machine.

`sentinels.domain` is the pure core (no I/O, no clock, no environment);
`sentinels.adapters` hold the ports' real and in-memory implementations;
`sentinels.embedded` runs the single-machine default (`sentinels up`).
"""

__version__ = "0.1.0"
