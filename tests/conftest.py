"""Lets test modules import the helper modules beside them (results_store, ddp_helpers):
pytest's importlib mode does not put the tests folder on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402

#: Epochs of the shared SSL checkpoints: enough to beat random init by ~3 kNN points (MEASURED).
SSL_EPOCHS = 10


def _pretrained(tmp_path_factory: pytest.TempPathFactory, recipe: str) -> Path:
    from sslbench.benchmark.engine import pretrain
    from sslbench.benchmark.recipes import resolve

    out = tmp_path_factory.mktemp(recipe)
    cfg = resolve(recipe, [f"train.epochs={SSL_EPOCHS}", "train.seed=0"])
    return pretrain(cfg, out, progress=False).checkpoint


@pytest.fixture(scope="session")
def simclr_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simclr-quick checkpoint (10 epochs on the embedded data, seed 0), trained once per session
    and shared by the protocol tests that need an SSL encoder to beat random init."""
    return _pretrained(tmp_path_factory, "simclr-quick")


@pytest.fixture(autouse=True)
def _private_data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded image-folder caches (data.cache) go to a temporary folder, never into ~/.cache."""
    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "sslbench-cache"))
