"""What the operator observes and reports, beside a FineTuneJob's status.

- :mod:`.progress`: a running trainer's progress, scraped from its ``/metrics``;
- :mod:`.metrics`: the operator's own Prometheus metrics, and the server that serves
  them with ``/readyz``;
- :mod:`.probes`: liveness (kopf's health endpoint) and readiness gates.

The dependencies go one way: probes reads the metrics server (a probe fails when its
thread dies); the server knows readiness only as something with a ``report()``.
"""
