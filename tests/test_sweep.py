"""Sweep files, cells, and idempotent local sweeps (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sslbench.benchmark.cell import CellTask, read_error, run_cell
from sslbench.benchmark.cli import main
from sslbench.benchmark.engine import Tracking, pretrain
from sslbench.benchmark.errors import ConfigError, SSLBenchError, UnknownNameError
from sslbench.benchmark.sweep import expand, load_sweep, sweep_from_dict
from sslbench.benchmark.sweep_run import plan, run, status_text
from sslbench.results import cells as C
from sslbench.results.aggregate import load_runs
from sslbench.results.tracking import get_client

TINY_SET = {"data.dataset": "synthetic", "train.epochs": 2, "train.device": "cpu",
            "augment": "simclr-small", "method.proj_hidden_dim": 32, "method.proj_dim": 16,
            "data.batch_size": 32}


def _spec(tmp_path: Path, **over: object):
    raw: dict[str, object] = {"name": "t", "recipe": "simclr-quick", "protocols": ["knn-k20-t0.07"],
                              "set": dict(TINY_SET), "axes": {"seed": [0, 1]},
                              "out": str(tmp_path / "sweep"),
                              "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}}
    raw.update(over)
    return sweep_from_dict(raw)


# --- spec ---------------------------------------------------------------------------------------
def test_toml_and_yaml_files_give_the_same_cells(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text('name = "g"\nrecipe = "simclr-quick"\nprotocols = ["linear"]\n'
                    '[set]\n"train.epochs" = 3\n[axes]\nmethod = ["simclr", "byol"]\n'
                    'batch_size = [64, 128]\nseed = [0, 1]\n'
                    '[[exclude]]\nmethod = "byol"\nbatch_size = 64\n'
                    '[[include]]\nmethod = "byol"\n"method.pred_hidden_dim" = 1024\n'
                    '[[include]]\nmethod = "simclr"\nbatch_size = 512\n')
    yaml = tmp_path / "g.yaml"
    yaml.write_text("name: g\nrecipe: simclr-quick\nprotocols: [linear]\nset: {train.epochs: 3}\n"
                    "axes: {method: [simclr, byol], batch_size: [64, 128], seed: [0, 1]}\n"
                    "exclude: [{method: byol, batch_size: 64}]\n"
                    "include: [{method: byol, method.pred_hidden_dim: 1024}, "
                    "{method: simclr, batch_size: 512}]\n")
    a, b = expand(load_sweep(toml)), expand(load_sweep(yaml))
    assert [c.id for c in a] == [c.id for c in b]
    assert len(a) == 4 + 2 + 1  # 8 - 2 excluded + the new simclr-512 cell
    byol = [c for c in a if c.config.method == "byol"]
    assert byol and all(c.config.recipe == "byol-quick" for c in byol)  # the method's own recipe
    assert all(c.config.method_args["pred_hidden_dim"] == 1024 for c in byol)  # include extends
    assert all(c.config.train.epochs == 3 for c in a)
    assert {c.config.data.batch_size for c in a if c.config.method == "simclr"} == {64, 128, 512}
    assert len({c.config_hash for c in a}) == len(a)
    assert a[0].run_dir.parts[-4:-1] == ("sslbench-sweeps", "g", "cells")  # default folder


def test_cell_hashes_are_stable_and_ignore_paths(tmp_path):
    a = expand(_spec(tmp_path))
    b = expand(_spec(tmp_path / "elsewhere"))
    assert [c.config_hash for c in a] == [c.config_hash for c in b]
    assert [c.id for c in a] == [c.id for c in b]


@pytest.mark.parametrize("over, words", [
    ({"axes": {"no_such.key": [1, 2]}}, ["no_such.key"]),
    ({"axes": {"batch_size": ["many"]}}, ["batch_size"]),
    ({"axes": {"seed": []}}, ["non-empty"]),
    ({"axes": {"seed": 3}}, ["non-empty list"]),
    ({"axes": {"seed": [0]}, "exclude": [{"seed": 0}]}, ["no cells"]),
    ({"exclude": [{"method": "byol"}]}, ["not an axis"]),
    ({"colour": "red"}, ["Unknown key", "colour"]),
    ({"protocols": "linear"}, ["protocols"]),
    ({"protocols": ["knn-k3"]}, ["knn-k3"]),
    ({"axes": {"method": ["nosuchmethod"]}}, ["nosuchmethod"]),
    ({"slurm": {"time_min": "soon"}}, ["slurm.time_min"]),
    ({"slurm": {"gpus": 8}}, ["gpus"]),
    ({"recipe": 3}, ["recipe"]),
])
def test_bad_sweeps_give_one_clear_error(tmp_path, over, words):
    with pytest.raises(SSLBenchError) as info:
        _spec(tmp_path, **over)
    text = str(info.value)
    assert all(w in text for w in words), text
    assert "Traceback" not in text and "\n" not in text.strip()


def test_bad_sweep_files(tmp_path):
    with pytest.raises(SSLBenchError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("recipe = [unclosed\n")
    with pytest.raises(SSLBenchError, match="not valid TOML"):
        load_sweep(bad)
    other = tmp_path / "grid.json"
    other.write_text("{}")
    with pytest.raises(SSLBenchError, match="neither"):
        load_sweep(other)


def test_unknown_method_error_lists_the_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError) as info:
        _spec(tmp_path, axes={"method": ["simclrr"]})
    assert "simclr" in str(info.value)


def test_cli_form_equals_file_form(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text('name = "cli-sweep"\nrecipe = "simclr-quick"\n[axes]\nbatch_size = [64, 128]\n'
                 'seed = [0, 1]\n[set]\n"train.epochs" = 2\n')
    assert main(["sweep", "plan", str(f), "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}"]) == 0
    from_file = capsys.readouterr().out.splitlines()[1:-1]
    assert main(["sweep", "plan", "--recipe", "simclr-quick", "--axis", "batch_size=64,128",
                 "--axis", "seed=0,1", "--set", "train.epochs=2",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}"]) == 0
    from_cli = capsys.readouterr().out.splitlines()[1:-1]
    assert [line.split()[0] for line in from_file] == [line.split()[0] for line in from_cli]
    assert len(from_cli) == 4


def test_cli_sweep_errors_are_one_paragraph(tmp_path, capsys):
    assert main(["sweep", "plan"]) == 2
    assert "--recipe" in capsys.readouterr().err
    f = tmp_path / "s.toml"
    f.write_text('recipe = "simclr-quick"\n[axes]\nwidth = [1]\n')
    assert main(["sweep", "plan", str(f)]) == 2
    err = capsys.readouterr().err
    assert "width" in err and "Traceback" not in err


def test_unreachable_tracking_server_is_one_clear_error(tmp_path, monkeypatch):
    spec = _spec(tmp_path, tracking={"uri": "http://user:secret@127.0.0.1:9/"})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(SSLBenchError) as info:
        plan(spec)
    assert "Cannot reach" in str(info.value) and "secret" not in str(info.value)


def test_slurm_executor_without_sbatch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no squeue
    with pytest.raises(SSLBenchError, match="sbatch"):
        run(_spec(tmp_path), "slurm", echo=lambda _: None)


# --- cell state (pure) ----------------------------------------------------------------------------
def _frame(rows):
    return pd.DataFrame(rows, columns=["run_id", "status", "start_time", "kind", "config_hash",
                                       "protocol_spec", "eval_dataset", "run_dir", "error",
                                       "eval_seconds"])


def test_cell_record_states():
    spec = {"knn": '{"k": 20}'}
    pre = dict(run_id="p", status="FINISHED", start_time=1, kind="pretrain", config_hash="h")
    ev = dict(run_id="e", status="FINISHED", start_time=2, kind="eval", config_hash="h",
              protocol_spec='{"k": 20}', eval_dataset="d", eval_seconds=1.0)
    assert C.cell_record(_frame([]), "h", spec).state == C.PENDING
    assert C.cell_record(_frame([pre, ev]), "h", spec, dataset="d").state == C.DONE
    assert C.cell_record(_frame([pre, ev]), "other", spec).state == C.PENDING
    assert C.cell_record(_frame([pre]), "h", spec).state == C.PARTIAL
    assert C.cell_record(_frame([pre, {**ev, "protocol_spec": '{"k": 200}'}]), "h", spec).state == C.PARTIAL
    failed = C.cell_record(_frame([pre, {**ev, "status": "FAILED", "error": "ValueError: x"}]), "h", spec)
    assert failed.state == C.FAILED and failed.error == "ValueError: x"
    assert C.cell_record(_frame([{**pre, "status": "KILLED"}]), "h", spec).state == C.INTERRUPTED
    assert C.cell_record(_frame([{**pre, "status": "RUNNING"}]), "h", spec).state == C.RUNNING
    rec = C.cell_record(_frame([{**pre, "status": "FAILED", "error": "NaN"}]), "h", spec)
    assert rec.state == C.FAILED and rec.error == "NaN"
    # a FINISHED run wins over a newer failed one of the same config
    rec = C.cell_record(_frame([pre, {**pre, "run_id": "q", "status": "FAILED", "start_time": 5}, ev]),
                        "h", spec)
    assert rec.state == C.DONE and rec.pretrain_run_id == "p"


# --- local sweeps ---------------------------------------------------------------------------------
def killed_experiment_id(spec):
    return get_client(spec.tracking_uri).get_experiment_by_name(spec.experiment).experiment_id


def _pretrain_runs(spec):
    return load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind="pretrain",
                     finished_only=False)


def _steps(spec, run_id, key="train/loss"):
    client = get_client(spec.tracking_uri)
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_local_sweep_runs_once_and_skips_when_done(tmp_path):
    spec = _spec(tmp_path)
    first = run(spec, "local", echo=lambda _: None)
    assert len(first.launched) == 2 and not first.failed
    second = run(spec, "local", echo=lambda _: None)
    assert second.launched == [] and len(second.done) == 2
    runs = load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind=None,
                     finished_only=False)
    assert (runs["kind"] == "pretrain").sum() == 2 and (runs["kind"] == "eval").sum() == 2
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs.loc[runs["kind"] == "pretrain", "sweep"]) == {"t"}
    assert "2 done" in status_text(spec)
    assert "0 to run" in plan(spec)


def test_killed_cells_resume_into_their_runs_without_duplicates(tmp_path):
    spec = _spec(tmp_path, axes={"seed": [0, 1, 2]})
    cells = expand(spec)
    tracking = Tracking(spec.tracking_uri, spec.experiment)
    # cell 0: preempted after one of its two epochs (its MLflow run is KILLED)
    killed = pretrain(cells[0].config, cells[0].run_dir, tracking=tracking, progress=False,
                      stop_after_epochs=1)
    # cell 1: its job died after creating the MLflow run, before the first checkpoint
    client = get_client(spec.tracking_uri)
    orphan = client.create_run(killed_experiment_id(spec), tags={
        "kind": "pretrain", "config_hash": cells[1].config_hash,
        "run_dir": str(cells[1].run_dir.resolve())}).info
    assert "interrupted" in status_text(spec)
    report = run(spec, "local", echo=lambda _: None)
    assert not report.failed
    pre = _pretrain_runs(spec)
    assert len(pre) == 3 and set(pre["status"]) == {"FINISHED"}  # no duplicate, all finished
    assert {killed.run_id, orphan.run_id} <= set(pre["run_id"])
    for run_id in pre["run_id"]:
        assert _steps(spec, run_id) == [1, 2]  # every epoch logged exactly once
    # an evaluation killed mid-way is re-run into the same run
    ev = load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind="eval")
    victim = ev["run_id"].iloc[0]
    client.set_terminated(victim, status="KILLED")
    run(spec, "local", echo=lambda _: None)
    ev2 = load_runs(tracking_uri=spec.tracking_uri, experiment=spec.experiment, kind="eval",
                    finished_only=False)
    assert len(ev2) == 3 and set(ev2["status"]) == {"FINISHED"}
    assert len(client.get_metric_history(victim, "top1")) == 1  # marked done, not logged twice


def test_failed_cell_is_reported_and_rerun(tmp_path):
    spec = _spec(tmp_path, set={**TINY_SET, "data.dataset": "imagefolder",
                                "data.data_dir": str(tmp_path / "nowhere")}, axes={"seed": [0]})
    report = run(spec, "local", echo=lambda _: None)
    (cell_id, error), = report.failed.items()
    assert "nowhere" in error
    assert read_error(expand(spec)[0].run_dir) is not None
    text = status_text(spec)
    assert "failed" in text and "nowhere" in text
    # the next run tries the failed cell again
    assert run(spec, "local", echo=lambda _: None).launched == [cell_id]


def test_subprocess_workers(tmp_path):
    spec = _spec(tmp_path, set={**TINY_SET, "train.epochs": 1})
    report = run(spec, "local", workers=2, echo=lambda _: None)
    assert not report.failed and len(report.launched) == 2
    assert run(spec, "local", workers=2, echo=lambda _: None).launched == []
    for cell in expand(spec):
        assert (cell.run_dir / "log.txt").exists()


def test_cell_task_round_trip_and_config_drift(tmp_path):
    cell = expand(_spec(tmp_path))[0]
    task = CellTask(cell.id, "t", cell.config.to_dict(), "0" * 16, ["knn-k20-t0.07"],
                    str(cell.run_dir), None, "x")
    assert CellTask.load(task.save()) == task
    with pytest.raises(SSLBenchError, match="hashes to"):
        run_cell(task)
    with pytest.raises(ConfigError):
        sweep_from_dict({"recipe": "simclr-quick", "name": "a b"})


def test_finished_checkpoint_whose_run_was_left_open_is_completed_once(tmp_path):
    """A job killed after logging its final metrics, before MLflow heard FINISHED."""
    spec = _spec(tmp_path, axes={"seed": [0]})
    (cell,) = expand(spec)
    tracking = Tracking(spec.tracking_uri, spec.experiment)
    first = pretrain(cell.config, cell.run_dir, tracking=tracking, progress=False)
    client = get_client(spec.tracking_uri)
    client.update_run(first.run_id, status="RUNNING")
    again = pretrain(cell.config, cell.run_dir, resume=True, tracking=tracking, progress=False)
    assert again.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(first.run_id, "final/wall_time_s")) == 1
    assert _steps(spec, first.run_id) == [1, 2]


def test_slurm_settings_from_the_command_line(tmp_path):
    from sslbench.benchmark.sweep import with_slurm_overrides

    spec = _spec(tmp_path, slurm={"partition": "cpu", "additional": {"mail-type": "FAIL"}})
    out = with_slurm_overrides(spec, ["partition=gpu", "time_min=30", "setup=module load cuda"])
    assert (out.slurm.partition, out.slurm.time_min, out.slurm.setup) == ("gpu", 30, ("module load cuda",))
    assert out.slurm.additional == {"mail-type": "FAIL"} and out.slurm.cpus_per_task == 2
    with pytest.raises(ConfigError, match="slurm.time_min"):
        with_slurm_overrides(spec, ["time_min=soon"])
    with pytest.raises(ConfigError, match="gpus"):
        with_slurm_overrides(spec, ["gpus=8"])


def test_sweeps_accept_the_new_protocols_and_family_names(tmp_path):
    spec = _spec(tmp_path, protocols=["semisup", "semisup-10pct-distill", "detection-embedded", "diagnostics",
                                      "knn"])
    assert spec.protocols == ("semisup-1pct", "semisup-10pct-distill", "detection-embedded", "diagnostics",
                              "knn-k200-t0.1")
    assert all(c.protocols == spec.protocols for c in expand(spec))
    with pytest.raises(SSLBenchError, match="Unknown protocol 'semisup-2pct'"):
        expand(_spec(tmp_path, protocols=["semisup-2pct"]))
