"""The Python API: the README's example runs as written; config files; clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import sslbench
from sslbench.benchmark.errors import ConfigError, SSLBenchError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its API example"
    return match.group(1)


@pytest.mark.slow
def test_readme_api_example_runs(tmp_path):
    (tmp_path / "example.py").write_text(_readme_example())
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "simclr-api" / "checkpoints" / "last.pt").exists()
    assert "knn-k200-t0.1" in done.stdout and "linear" in done.stdout


def test_import_is_cheap_and_names_resolve():
    code = "import sys, sslbench; assert 'torch' not in sys.modules, 'torch imported'; print(sslbench.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert callable(sslbench.pretrain) and callable(sslbench.evaluate) and callable(sslbench.load_encoder)
    assert callable(sslbench.results.load_runs)
    with pytest.raises(AttributeError):
        sslbench.no_such_function  # noqa: B018


def test_pretrain_and_evaluate_with_shortcuts_and_dotted_keys(tmp_path):
    run = sslbench.pretrain("simclr-quick", epochs=1, dataset="synthetic", batch_size=32, out=tmp_path / "r",
                            tracking_uri="none", **{"method.temperature": 0.3, "augment": "simclr-small"})
    assert run.config.method_args["temperature"] == 0.3 and run.config.data.batch_size == 32
    scores = sslbench.evaluate(run, protocols=["knn-k20-t0.07"])
    assert 0 <= scores["knn-k20-t0.07"]["top1"] <= 100
    module_scores = sslbench.evaluate(run.encoder, protocols=["knn-k20-t0.07"], dataset="synthetic")
    assert module_scores["knn-k20-t0.07"]["top1"] == pytest.approx(scores["knn-k20-t0.07"]["top1"])
    with pytest.raises(ConfigError, match="unknown option 'epoch'"):
        sslbench.pretrain("simclr-quick", epoch=1)
    with pytest.raises(SSLBenchError, match="no dataset"):
        sslbench.evaluate(run.encoder, protocols=["knn-k20-t0.07"])


def test_config_file_gives_recipe_and_overrides(tmp_path):
    path = tmp_path / "simclr.toml"
    path.write_text('recipe = "simclr-quick"\n[data]\ndataset = "synthetic"\nbatch_size = 64\n'
                    "[train]\nepochs = 3\n[method]\ntemperature = 0.25\n[crop]\nmode = \"random\"\n")
    recipe, overrides = sslbench.read_config_file(path)
    assert recipe == "simclr-quick"
    assert overrides == ["data.dataset=synthetic", "data.batch_size=64", "train.epochs=3",
                         "method.temperature=0.25", "crop.mode=random"]
    cfg = sslbench.resolve_config(config_file=path, overrides={"train.epochs": 5})
    assert cfg.train.epochs == 5 and cfg.data.batch_size == 64 and cfg.recipe == "simclr-quick"
    path.write_text("recipe = [1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        sslbench.read_config_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        sslbench.read_config_file(tmp_path / "missing.toml")
