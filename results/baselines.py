"""sslbench's own baselines: measured reference rows (``results/reference/sslbench.csv``).

Like timm's results CSVs: the mean over seeds that sslbench measured at recorded commits on the
embedded data, for every (method, dataset, backbone, epochs, batch size, protocol) of the runs
given, written in the reference-table schema with provenance ``M``. A later change that breaks a
method then shows up in ``sslbench reproduce`` as "not reproduced".

The tolerance is ``max(1.0, 2.5 × std over seeds)`` points (one seed: 1.0): on the embedded
2,000-image test set one image is 0.05 points and the binomial standard error is ≈ 0.9 points,
while the same code and seed reproduce a run to the last digit on one machine.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import pandas as pd

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results import tracking as T
from sslbench.results.reference import COLUMN_NAMES

KEYS: tuple[str, ...] = (
    T.TAG_METHOD, T.TAG_DATASET, T.TAG_BACKBONE, T.TAG_EPOCHS, T.TAG_BATCH_SIZE, T.TAG_PROTOCOL,
    T.TAG_RECIPE, T.TAG_AUGMENT,
)  # fmt: skip


def tolerance(std: float) -> float:
    """``max(1.0, 2.5 σ)`` rounded up to 0.1 points; 1.0 when σ is unknown (one seed)."""
    if std is None or math.isnan(std):
        return 1.0
    return max(1.0, math.ceil(25 * std) / 10)


def baseline_rows(runs: pd.DataFrame, *, command: str, metrics: Sequence[str] = (T.METRIC_TOP1,)) -> pd.DataFrame:
    """Reference rows (schema of :mod:`sslbench.results.reference`) from finished eval runs.

    Args:
        runs: the evaluation runs to summarise (``load_runs(kind="eval")``, filtered to the
            configurations that should become baselines). Every commit they ran at is recorded.
        command: the command that produced the runs, recorded in ``source``.
        metrics: one row per metric.

    Raises:
        SSLBenchError: no runs.
    """
    if runs.empty:
        raise SSLBenchError("No evaluation runs to make baselines from.", "Run the baseline sweep first.")
    rows = []
    for key, group in runs.groupby(list(KEYS), dropna=False, sort=True):
        k = dict(zip(KEYS, key, strict=True))
        seeds = sorted(int(s) for s in group[T.TAG_SEED].dropna())
        commits = sorted({str(c)[:12] for c in group[T.TAG_GIT_COMMIT].dropna()})
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            if values.empty:
                continue
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            epochs, batch = int(k[T.TAG_EPOCHS]), int(k[T.TAG_BATCH_SIZE])
            rows.append({
                "id": f"sslbench.{k[T.TAG_DATASET]}.{k[T.TAG_METHOD]}.{k[T.TAG_BACKBONE]}.e{epochs}.b{batch}."
                      f"{k[T.TAG_PROTOCOL]}.{metric}".lower(),
                "method": k[T.TAG_METHOD], "variant": f"recipe {k[T.TAG_RECIPE]}, augment {k[T.TAG_AUGMENT]}",
                "paper": "sslbench baseline", "venue": "", "dataset": k[T.TAG_DATASET], "eval_dataset": "",
                "backbone": k[T.TAG_BACKBONE], "epochs": epochs, "batch_size": batch,
                "protocol": k[T.TAG_PROTOCOL], "protocol_detail": "sslbench protocol of that name",
                "metric": metric, "value": round(float(values.mean()), 3),
                "std": "" if math.isnan(std) else round(std, 3), "n_runs": len(values),
                "source": f"sslbench commit(s) {' '.join(commits)}: {command} (seeds {','.join(map(str, seeds))})",
                "provenance": "M", "flag": "", "tolerance": tolerance(std), "reported_by": "sslbench",
                "ablation": "", "augment": "" if k[T.TAG_AUGMENT] in (None, "none") else k[T.TAG_AUGMENT],
                "notes": "final-epoch numbers; 2-core CPU; mean over seeds, std ddof=1",
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMN_NAMES))


def to_csv(rows: pd.DataFrame) -> str:
    """The rows as reference CSV text (the csv module quotes what needs quoting)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMN_NAMES, lineterminator="\n")
    writer.writeheader()
    for row in rows.to_dict(orient="records"):
        writer.writerow(row)
    return out.getvalue()
