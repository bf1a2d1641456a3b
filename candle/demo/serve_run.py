"""``serve run CONFIG`` on a local Ray whose Prometheus endpoint the demo prints (on a port it was given).

``serve run`` starts its own local Ray with a metrics port nobody outside learns; started here first,
Serve's CLI finds Ray running and uses it (it initializes Ray only when nobody has), and the port is
read back from ``ray.nodes()``. A ``RAY_ADDRESS`` naming a cluster is joined as is: its metrics
endpoints are its own. ``python -m candle.demo.serve_run CONFIG METRICS_PORT`` (0: any free port).
"""

from __future__ import annotations

import os
import sys

import ray
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.scripts import cli


def main(config: str, metrics_port: int) -> None:
    if os.environ.get("RAY_ADDRESS", "local") == "local":
        # The one private argument (tests/test_demo.py fails if it stops working): Ray's public way to fix
        # the port is `ray start --metrics-export-port`, which leaves a cluster behind that only `ray stop`
        # (every cluster of the machine) ends.
        if metrics_port:
            ray.init(address="local", namespace=SERVE_NAMESPACE, _metrics_export_port=metrics_port)
        else:
            ray.init(address="local", namespace=SERVE_NAMESPACE)
        (port,) = {node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]}
        print(f"candle demo: Prometheus metrics on http://127.0.0.1:{port}/metrics", flush=True)
    cli(["run", config], prog_name="serve")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
