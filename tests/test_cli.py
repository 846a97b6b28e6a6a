"""Bad input through the CLI: one paragraph naming the problem and the fix, exit 2, no traceback,
finished results untouched."""

import pytest

from sslbench.benchmark.cli import main

TINY = ["--dataset", "synthetic", "--set", "data.batch_size=32", "--set", "method.proj_hidden_dim=32",
        "--set", "method.proj_dim=16", "--set", "augment=simclr-small", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    # `pretrain` and `config` say which recipe runs (and any note) before they fail
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith(("recipe: ", "note: ")))
    assert err.startswith("sslbench: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)


@pytest.mark.parametrize("argv, fragments", [
    (["pretrain", "--method", "simclrr"], ["Unknown method 'simclrr'", "simclr", "sslbench methods"]),
    (["pretrain", "--recipe", "nope"], ["Unknown recipe 'nope'", "sslbench recipes"]),
    (["pretrain", "--method", "simclr", "--dataset", "imagenet21k"], ["Unknown dataset 'imagenet21k'", "cifar10"]),
    (["pretrain", "--method", "simclr", "--backbone", "resnet-9000"], ["Unknown backbone 'resnet-9000'", "timm"]),
    (["pretrain", "--method", "simclr", "--augment", "nope"], ["Unknown augmentation recipe 'nope'"]),
    (["pretrain", "--method", "simclr", "--eval", "knn-k1"], ["Unknown protocol 'knn-k1'", "knn-k200-t0.1"]),
    (["pretrain", "--method", "simclr", "--set", "optim.lr=1"], ["Unknown config key 'optim.lr'", "optim.base_lr"]),
    (["pretrain", "--method", "simclr", "--set", "data.batch_size=big"], ["data.batch_size must be an integer"]),
    (["config", "--method", "byol", "--set", "method.temperature=0.1"], ["Unknown key 'method.temperature'"]),
])
def test_unknown_names_and_bad_keys(capsys, argv, fragments):
    code, _, err = run(capsys, *argv, "--no-progress") if argv[0] == "pretrain" else run(capsys, *argv)
    assert_user_error(code, err, *fragments)


def test_missing_data_folder(capsys, tmp_path):
    code, _, err = run(capsys, "pretrain", "--method", "simclr", "--dataset", "cifar10",
                       "--data-dir", str(tmp_path / "nowhere"), "--no-progress")
    assert_user_error(code, err, str(tmp_path / "nowhere"), "--download")


def test_corrupt_checkpoint(capsys, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage" * 100)
    code, _, err = run(capsys, "eval", str(bad), "--no-progress")
    assert_user_error(code, err, str(bad), "corrupt")


def test_nan_loss_and_existing_run_are_clear_and_keep_results(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run(capsys, "pretrain", "--method", "simclr", *TINY, "--epochs", "2", "--out", str(out),
                       "--set", "optim.name=sgd", "--set", "optim.base_lr=1e30",
                       "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_user_error(code, err, "became", "at step", "Lower optim.base_lr")
    # a finished run is never overwritten
    code, _, _ = run(capsys, "pretrain", "--method", "simclr", *TINY, "--epochs", "1", "--out", str(tmp_path / "ok"),
                     "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert code == 0
    ckpt = tmp_path / "ok" / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    code, _, err = run(capsys, "pretrain", "--method", "simclr", *TINY, "--epochs", "1", "--out", str(tmp_path / "ok"),
                       "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_user_error(code, err, "already holds a run", "--resume")
    # a mismatched config cannot resume it either
    code, _, err = run(capsys, "pretrain", "--method", "simclr", *TINY, "--epochs", "3", "--out", str(tmp_path / "ok"),
                       "--resume", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_user_error(code, err, "different configuration")
    assert ckpt.read_bytes() == before


def test_list_commands(capsys):
    for what, expected in [("methods", "simclr"), ("recipes", "byol-cifar10"), ("datasets", "fashion-mnist-mini"),
                           ("protocols", "knn-k20-t0.07"), ("augmentations", "byol"), ("backbones", "small-cnn")]:
        code, out, _ = run(capsys, what)
        assert code == 0 and expected in out


def test_config_prints_resolved_hash(capsys):
    code, out, _ = run(capsys, "config", "--recipe", "simclr-quick", "--set", "method.temperature=0.3")
    assert code == 0 and '"temperature": 0.3' in out and "config_hash" in out


def test_readme_methods_table_lists_every_registered_method():
    """The README's methods table is `sslbench methods --markdown`, row for row."""
    from pathlib import Path

    from sslbench.benchmark.cli import methods_listing

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for row in methods_listing(markdown=True).splitlines():
        assert row in readme, f"README lacks the row: {row}"
