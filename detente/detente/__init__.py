"""Detente: the umbrella `detente` command, the demo and the cluster harness it runs on.

``cli`` wires each component's command group; ``demo`` is `detente demo`;
``cluster`` starts the enclave worker and the coordinator as real processes
and drives parties through the real CLI; ``evaluation`` holds the demo's
held-out split and AUC (numpy only); ``data`` is the bundled credit data set.
"""

__all__ = ["cli", "cluster", "demo", "evaluation"]
