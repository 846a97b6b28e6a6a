"""One writer process of tests/test_tracking_scale.py (run as a script, not collected by pytest).

Opens one run with :class:`~sslbench.results.tracking.TrackedRun`, waits at a barrier until the
test lets every writer go at once, then logs ``steps`` steps of ``keys`` metrics, one
``log_metrics`` call (one MLflow write) per step, and prints its run id as JSON.

Usage: ``python tests/tracking_writer.py URI EXPERIMENT INDEX STEPS KEYS BARRIER_DIR``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def metric_key(k: int) -> str:
    return f"scale/m{k}"


def metric_value(index: int, k: int, step: int) -> float:
    """Distinct for every (writer, key, step) and exact in float64, so a lost or shifted value
    shows."""
    return index * 1_000_000 + k * 10_000 + step + 0.25


def main(uri: str, experiment: str, index: int, steps: int, keys: int, barrier: Path) -> None:
    from sslbench.results.tracking import TrackedRun

    with TrackedRun(
        run_name=f"writer-{index}",
        tags={"writer": str(index)},
        experiment=experiment,
        tracking_uri=uri,
    ) as run:
        (barrier / f"ready-{index}").touch()
        deadline = time.monotonic() + 120
        while not (barrier / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never said go")
            time.sleep(0.02)
        run.log_params(
            {"writer": index, "steps": steps, "keys": keys, "tracking_uri": run.tracking_uri}
        )
        for step in range(1, steps + 1):
            run.log_metrics({metric_key(k): metric_value(index, k, step) for k in range(keys)}, step)
        run_id = run.run_id
    print(json.dumps({"index": index, "run_id": run_id}))


if __name__ == "__main__":
    uri, experiment, index, steps, keys, barrier = sys.argv[1:]
    main(uri, experiment, int(index), int(steps), int(keys), Path(barrier))
