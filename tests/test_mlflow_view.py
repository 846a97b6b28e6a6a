"""What a user sees in MLflow after a tiny pretraining and its evaluations (SQLite store in tmp_path):
run names that say what ran, MLflow's own system tags beside sslbench's, integers as integers in
params, evaluation runs whose start and end are the evaluation's, the headline metrics on the
pretraining run, and the final checkpoint and training curves as artifacts."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest

from sslbench.benchmark.engine import Tracking, pretrain
from sslbench.benchmark.errors import SSLBenchError
from sslbench.benchmark.evaluate import evaluate_and_log, load_eval_splits
from sslbench.benchmark.recipes import resolve
from sslbench.results import tracking as T
from sslbench.results.aggregate import aggregate, load_runs

TINY = ["data.dataset=synthetic", "data.batch_size=32", "method.proj_hidden_dim=64", "method.proj_dim=32",
        "augment=simclr-small", "train.epochs=1"]
PROTOCOLS = ["knn-k200-t0.1", "linear"]
NAME = "simclr-quick@synthetic b32 e1 s0"  # the recipe, where the run departs from it, the seed


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("view")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    result = pretrain(resolve("simclr-quick", TINY), root / "run", tracking=Tracking(uri), progress=False,
                      echo=None)
    train, test = load_eval_splits("synthetic")
    evaluate_and_log(result.encoder, protocols=PROTOCOLS, train=train, test=test, device="cpu",
                     parent_run_id=result.run_id, tags=result.tags, tracking=Tracking(uri), progress=False,
                     echo=None)
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name(T.DEFAULT_EXPERIMENT).experiment_id])
    parent = next(r for r in runs if r.info.run_id == result.run_id)
    evals = {r.data.tags[T.TAG_PROTOCOL]: r for r in runs if r.data.tags.get(T.TAG_KIND) == T.KIND_EVAL}
    return {"uri": uri, "root": root, "result": result, "parent": parent, "evals": evals, "client": client}


def test_run_names_say_what_ran(logged: dict[str, Any]) -> None:
    assert logged["parent"].info.run_name == NAME
    assert {p: r.info.run_name for p, r in logged["evals"].items()} == {p: f"{p} ← {NAME}" for p in PROTOCOLS}
    assert T.pretrain_run_name("simclr-cifar10", 0) == "simclr-cifar10 s0"
    assert T.eval_run_name("linear", "simclr-cifar10 s0") == "linear ← simclr-cifar10 s0"
    assert T.eval_run_name("linear", "x s0", eval_dataset="cifar100") == "linear@cifar100 ← x s0"
    assert T.run_label({"recipe": "baseline", "method": "random-init", "seed": "2"}) == "random-init s2"


def test_system_tags_beside_sslbench_tags(logged: dict[str, Any]) -> None:
    sha = T.git_commit()
    for run in (logged["parent"], *logged["evals"].values()):
        tags = run.data.tags
        assert tags[T.TAG_MLFLOW_SOURCE_TYPE] == "LOCAL" and tags[T.TAG_MLFLOW_USER]
        assert tags[T.TAG_MLFLOW_SOURCE_NAME]
        if sha != "unknown":
            assert tags[T.TAG_MLFLOW_GIT_COMMIT] == sha.removesuffix("-dirty")
            assert tags[T.TAG_GIT_COMMIT] == sha  # sslbench's own keeps the -dirty mark
        assert tags[T.TAG_METHOD] == "simclr" and tags[T.TAG_SEED] == "0"


def test_source_name_keeps_credentials_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/bin/sslbench", "pretrain", "--tracking-uri",
                                      "http://alice:s3cret@mlflow:5000"])
    assert T._source_name() == "sslbench pretrain"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/tool", "http://alice:s3cret@mlflow:5000"])
    assert "s3cret" not in T._source_name()


def test_integers_are_logged_as_integers(logged: dict[str, Any]) -> None:
    parent = logged["parent"].data
    assert parent.tags[T.TAG_BATCH_SIZE] == "32" and parent.params["data.batch_size"] == "32"
    assert parent.params["train.epochs"] == "1" and parent.params["derived.total_steps"] == "8"
    knn, linear = logged["evals"]["knn-k200-t0.1"].data.params, logged["evals"]["linear"].data.params
    assert knn["k"] == "200" and knn["temperature"] == "0.1"
    for params in (knn, linear):
        assert params["num_train"] == "256" and params["num_test"] == "256" and params["feature_dim"] == "256"
    assert linear["lr"] == "0.01"
    every = [v for r in (logged["parent"], *logged["evals"].values()) for v in r.data.params.values()]
    assert not [v for v in every if v.endswith(".0")], every


def test_evaluation_runs_last_as_long_as_their_protocol(logged: dict[str, Any]) -> None:
    parent = logged["parent"].info
    knn, linear = logged["evals"]["knn-k200-t0.1"], logged["evals"]["linear"]
    assert parent.end_time <= knn.info.start_time <= knn.info.end_time <= linear.info.start_time
    assert linear.info.start_time <= linear.info.end_time
    # The first span holds the shared feature extraction; each holds its protocol's own seconds.
    knn_s = (knn.info.end_time - knn.info.start_time) / 1000
    assert knn_s >= float(knn.data.params["feature_seconds"]) + knn.data.metrics["eval_seconds"] - 0.005
    linear_s = (linear.info.end_time - linear.info.start_time) / 1000
    assert linear_s >= linear.data.metrics["eval_seconds"] - 0.005
    # The runs were logged after the protocols ran, yet end when their protocol did.
    latest = max(m.timestamp for m in logged["client"].get_metric_history(linear.info.run_id, "top1"))
    assert linear.info.end_time <= latest


def test_pretraining_run_carries_its_evaluations_headline_metrics(logged: dict[str, Any]) -> None:
    metrics = logged["client"].get_run(logged["parent"].info.run_id).data.metrics
    for protocol, run in logged["evals"].items():
        assert metrics[f"eval/{protocol}/top1"] == run.data.metrics["top1"]
    assert "eval/linear/val_top1" not in metrics  # the headline only
    assert T.eval_metric_name("linear", "top1", "cifar100") == "eval/linear/cifar100/top1"
    # The parent stays FINISHED, and the results read back as before.
    assert logged["client"].get_run(logged["parent"].info.run_id).info.status == "FINISHED"
    evals = load_runs(tracking_uri=logged["uri"])
    agg = aggregate(evals, metrics=["top1"])  # synthetic data has < 5 classes: no top-5
    assert sorted(agg["protocol"]) == sorted(PROTOCOLS) and (agg["n"] == 1).all()


def test_checkpoint_and_training_curves_are_artifacts(logged: dict[str, Any]) -> None:
    client, run = logged["client"], logged["parent"]
    ckpt = Path(logged["result"].checkpoint)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        T.CONFIG_ARTIFACT, T.CHECKPOINT_ARTIFACT_DIR, T.TRAINING_CURVES_ARTIFACT}
    stored = client.list_artifacts(run.info.run_id, T.CHECKPOINT_ARTIFACT_DIR)
    assert [(a.path, a.file_size) for a in stored] == [("checkpoints/last.pt", ckpt.stat().st_size)]
    tags = run.data.tags
    assert tags[T.TAG_CHECKPOINT_SHA256] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert tags[T.TAG_CHECKPOINT_BYTES] == str(ckpt.stat().st_size)
    assert tags[T.TAG_CHECKPOINT_PATH] == str(ckpt.resolve())
    assert tags[T.TAG_CHECKPOINT_ARTIFACT] == "checkpoints/last.pt"
    png = Path(client.download_artifacts(run.info.run_id, T.TRAINING_CURVES_ARTIFACT, str(logged["root"])))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_large_checkpoint_is_named_not_uploaded_and_a_stopped_run_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = resolve("simclr-quick", [*TINY[:-1], "train.epochs=2"])
    stopped = pretrain(cfg, tmp_path / "run", tracking=Tracking(uri), progress=False, echo=None,
                       stop_after_epochs=1)
    client = _client(uri)
    run = client.get_run(stopped.run_id)
    assert run.info.status == "KILLED" and T.TAG_CHECKPOINT_SHA256 not in run.data.tags
    assert {a.path for a in client.list_artifacts(stopped.run_id)} == {T.CONFIG_ARTIFACT}
    monkeypatch.setenv(T.CHECKPOINT_ARTIFACT_MB_ENV, "0.001")  # 1 kB: every checkpoint is larger
    done = pretrain(cfg, tmp_path / "run", resume=True, tracking=Tracking(uri), progress=False, echo=None)
    run = client.get_run(done.run_id)
    assert done.run_id == stopped.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "simclr-quick@synthetic b32 e2 s0"
    assert run.data.tags[T.TAG_CHECKPOINT_SHA256] == hashlib.sha256(done.checkpoint.read_bytes()).hexdigest()
    assert T.TAG_CHECKPOINT_ARTIFACT not in run.data.tags
    assert {a.path for a in client.list_artifacts(done.run_id)} == {T.CONFIG_ARTIFACT, T.TRAINING_CURVES_ARTIFACT}
    assert sorted(m.step for m in client.get_metric_history(done.run_id, T.METRIC_TRAIN_LOSS)) == [1, 2]
    monkeypatch.setenv(T.CHECKPOINT_ARTIFACT_MB_ENV, "lots")
    with pytest.raises(SSLBenchError, match="not a size in MB"):
        T.checkpoint_artifact_limit_mb()


def test_a_param_logged_as_256_0_by_older_code_is_the_same_as_256(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    with T.TrackedRun(run_name="old", tracking_uri=uri) as run:
        run.log_params({"num_train": "256.0"})
        run.log_params({"num_train": T.param_value(256.0)})  # a resumed evaluation: no error
        with pytest.raises(SSLBenchError, match="cannot change a param"):
            run.log_params({"num_train": 257})
    assert T.param_value(256.0) == 256 and T.param_value(0.1) == 0.1 and T.param_value("x") == "x"
