"""bench_train runs small on CPU and prints its table of images/s and ratios."""

import json

from sslbench.benchmark import bench_train


def test_bench_train_small_prints_ratios_and_writes_json(tmp_path):
    lines = []
    out = tmp_path / "bench.json"
    report = bench_train.main(["--small", "--methods", "simclr,byol", "--variants", "fast,foreach=off,dataloader",
                               "--steps", "2", "--warmup", "1", "--profile-steps", "1", "--e2e-epochs", "2",
                               "--json", str(out)], echo=lines.append)
    text = "\n".join(lines)
    assert "| method | variant | images/s | × fast | × DataLoader |" in text
    rows = {(r["method"], r["variant"]): r for r in report["rows"]}
    assert set(rows) == {("simclr", "fast"), ("simclr", "foreach=off"), ("byol", "fast"), ("byol", "foreach=off"),
                         ("simclr", "dataloader")}
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert rows[("simclr", "fast")]["syncs_per_step"] == 0  # no host reads inside the step
    assert rows[("simclr", "fast")]["kernels_per_step"] > 0
    extra = report["extra"]
    assert extra["simclr/checkpoint_sync_blocking_s"] > 0 and extra["e2e_projected_200_epochs_plus_knn_s"] > 0
    assert 0 <= extra["e2e_knn_top1"] <= 100
    saved = json.loads(out.read_text())
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["git_commit"]
