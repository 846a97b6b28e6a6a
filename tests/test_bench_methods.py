"""The equal-budget method benchmark: one process per method, one table, failures named."""

import pandas as pd
import pytest

from sslbench.benchmark import bench_methods as B


@pytest.mark.slow
def test_benchmark_table_has_every_method_and_names_failures(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = B.main(["--methods", "simclr", "--recipes", "no-such-recipe", "--epochs", "1",
                 "--out", str(out), "--set", "data.dataset=synthetic", "--threads", "1"])
    assert rc == 1  # one recipe failed, and the table says so
    table = pd.read_csv(out / "methods.csv")
    assert table["method"].iloc[0] == "random-init"
    assert set(table["method"]) == {"random-init", "simclr", "no-such-recipe"}
    simclr = table[table["method"] == "simclr"].iloc[0]
    for col in ("kNN k=200 top-1", "kNN k=20 top-1", "linear top-1", "images/s", "peak memory (MiB)"):
        assert 0 < simclr[col] < (100.01 if "top-1" in col else 1e9), col
    assert simclr["Δ kNN vs random-init"] == pytest.approx(
        simclr["kNN k=200 top-1"] - table.loc[table["method"] == "random-init", "kNN k=200 top-1"].iloc[0])
    failed = table[table["method"] == "no-such-recipe"].iloc[0]
    assert "no-such-recipe" in failed["error"] and "Unknown recipe" in failed["error"]
    md = (out / "methods.md").read_text()
    assert "Equal budget: 1 epochs" in md and "| simclr" in md

    # an interrupted benchmark continues: finished runs are reused, not trained again
    capsys.readouterr()
    assert B.main(["--methods", "simclr", "--epochs", "1", "--out", str(out), "--set",
                   "data.dataset=synthetic", "--table-only"]) == 0
    assert "| simclr" in capsys.readouterr().out


def test_each_encoder_gets_its_own_random_init_baseline():
    """Methods on other data or with a wrapped encoder (CMC: one network per colour view) are
    compared with a random-init encoder of their own; the rest share one."""
    jobs = B.random_init_jobs(["simclr-quick", "byol-quick", "cmc-quick", "no-such-recipe"])
    assert jobs == {"small-cnn · fashion-mnist-mini": "simclr-quick",
                    "small-cnn · fashion-mnist-color-mini · color-split lab 0|1,2": "cmc-quick"}
    assert B.encoder_key("no-such-recipe") is None
    assert B.encoder_key("simclr-quick", ["data.dataset=synthetic"]) == "small-cnn · synthetic"
