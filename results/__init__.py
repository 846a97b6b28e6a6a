"""MLflow access, aggregation, tables and plots.

Modules:
    tracking: the MLflow run schema (tag and metric names), tracking-URI resolution and
        redaction, provenance tags, and :class:`~sslbench.results.tracking.TrackedRun`.
    aggregate: ``load_runs`` (MLflow -> one DataFrame row per run, paged), ``aggregate`` (mean,
        std and n over seeds), ``attach_pretrain`` and ``export_frame`` (CSV / Parquet).
    stats: t intervals, the paired comparison and the bootstrap order probability.
    reference: the published numbers (and sslbench's own baselines) as validated data.
    reproduce: runs against reference rows, with verdicts; Markdown, HTML and CSV reports.
    leaderboard: one row per configuration with every protocol and its cost; HTML, Markdown, CSV.
    ablation: batch-size curves, drop-one augmentation table, pairwise heatmap, training curves,
        accuracy against compute.
    baselines: sslbench's own reference rows from its runs.
    html: the self-contained page shell shared by the reports.
    tables: the comparison table (Markdown) and the long aggregated frame (CSV).
    plots: accuracy vs batch size, and the method comparison bar chart.
    server: :class:`~sslbench.results.server.MlflowServer`, a local ``mlflow server`` (e.g. on
        PostgreSQL, the cluster recipe) started as a child process and stopped with it.

Nothing is imported here: ``mlflow``, ``pandas`` and ``seaborn`` take seconds to import, and
the CLI should pay for them only in the commands that use them. The schema is described in
``docs/mlflow-schema.md``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``sslbench.results.load_runs`` (MLflow -> one DataFrame row per run), imported on first use."""
    if name == "load_runs":
        from sslbench.results.aggregate import load_runs

        return load_runs
    raise AttributeError(f"module 'sslbench.results' has no attribute {name!r}")
