"""MLflow access, aggregation, tables and plots.

Modules:
    tracking: the MLflow run schema (tag and metric names), tracking-URI resolution and
        redaction, provenance tags, and :class:`~sslbench.results.tracking.TrackedRun`.
    aggregate: ``load_runs`` (MLflow -> one DataFrame row per run) and ``aggregate`` (mean, std
        and n over seeds).
    tables: the comparison table (Markdown) and the long aggregated frame (CSV).
    plots: accuracy vs batch size, and the method comparison bar chart.
    server: :class:`~sslbench.results.server.MlflowServer`, a local ``mlflow server`` (e.g. on
        PostgreSQL, the cluster recipe) started as a child process and stopped with it.

Nothing is imported here: ``mlflow``, ``pandas`` and ``seaborn`` take seconds to import, and
the CLI should pay for them only in the commands that use them. The schema is described in
``docs/mlflow-schema.md``.
"""
