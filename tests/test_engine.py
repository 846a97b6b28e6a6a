"""The training engine: exact resume, finite-loss check, checkpoint safety, run-folder safety."""

import pytest
import torch

from sslbench.benchmark.checkpoint import load_checkpoint, save_checkpoint
from sslbench.benchmark.engine import load_encoder, pretrain
from sslbench.benchmark.errors import CheckpointError, NonFiniteLossError, SSLBenchError
from sslbench.benchmark.recipes import resolve

TINY = ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=3", "augment=simclr-small",
        "train.device=cpu"]
HEADS = {"simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
         "mocov2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.queue_size=64"],
         "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32"]}


def tiny(method, *extra):
    return resolve(f"{method}-quick", TINY + HEADS[method] + list(extra))


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, method):
    cfg = tiny(method)
    full = pretrain(cfg, tmp_path / "full", tracking=None, progress=False)
    part = pretrain(cfg, tmp_path / "part", tracking=None, progress=False, stop_after_epochs=1)
    assert load_checkpoint(part.checkpoint)["epoch"] == 1
    resumed = pretrain(cfg, tmp_path / "part", resume=True, tracking=None, progress=False)
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:  # includes target networks, queues and BN statistics
        assert torch.equal(a[k], b[k]), k
    losses = [[h["train/loss"] for h in load_checkpoint(r.checkpoint)["history"]] for r in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_training_changes_weights_and_differs_by_seed(tmp_path):
    a = pretrain(tiny("simclr", "train.epochs=1"), tmp_path / "a", tracking=None, progress=False)
    b = pretrain(tiny("simclr", "train.epochs=1", "train.seed=1"), tmp_path / "b", tracking=None, progress=False)
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    assert not torch.equal(wa["encoder.0.0.weight"], wb["encoder.0.0.weight"])


def test_finished_run_is_not_retrained(tmp_path):
    cfg = tiny("simclr", "train.epochs=1")
    pretrain(cfg, tmp_path / "r", tracking=None, progress=False)
    mtime = (tmp_path / "r" / "checkpoints" / "last.pt").stat().st_mtime_ns
    pretrain(cfg, tmp_path / "r", resume=True, tracking=None, progress=False)
    assert (tmp_path / "r" / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime


def test_existing_run_is_never_overwritten(tmp_path):
    cfg = tiny("simclr", "train.epochs=1")
    pretrain(cfg, tmp_path / "r", tracking=None, progress=False)
    with pytest.raises(SSLBenchError, match="already holds a run"):
        pretrain(cfg, tmp_path / "r", tracking=None, progress=False)


def test_resume_with_other_config_is_refused(tmp_path):
    pretrain(tiny("simclr", "train.epochs=1"), tmp_path / "r", tracking=None, progress=False)
    with pytest.raises(CheckpointError, match="different configuration"):
        pretrain(tiny("simclr", "train.epochs=2", "method.temperature=0.9"), tmp_path / "r",
                 resume=True, tracking=None, progress=False)


def test_nan_loss_names_the_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny("simclr", "train.epochs=3")
    pretrain(cfg, tmp_path / "r", tracking=None, progress=False, stop_after_epochs=1)
    good = _weights(tmp_path / "r" / "checkpoints" / "last.pt")
    from sslbench.methods.simclr import SimCLR

    original = SimCLR.training_step

    def poisoned(self, views, ctx):
        out = original(self, views, ctx)
        out.loss = out.loss * float("nan")
        return out

    SimCLR.training_step = poisoned
    try:
        with pytest.raises(NonFiniteLossError, match=r"became nan at step \d+ \(epoch 2"):
            pretrain(cfg, tmp_path / "r", resume=True, tracking=None, progress=False)
    finally:
        SimCLR.training_step = original
    after = _weights(tmp_path / "r" / "checkpoints" / "last.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_foreign_checkpoints_are_rejected(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an sslbench checkpoint"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="corrupt|plain tensors"):
        load_checkpoint(evil)


def test_truncated_checkpoint_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(100, 100)}})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_load_encoder_roundtrip(tmp_path):
    res = pretrain(tiny("byol", "train.epochs=1"), tmp_path / "r", tracking=None, progress=False)
    encoder, meta = load_encoder(res.checkpoint)
    x = torch.randn(4, 1, 16, 16)
    res.encoder.eval()
    assert torch.equal(encoder(x), res.encoder(x))
    assert meta["backbone"] == "small-cnn" and meta["feature_dim"] == 256


def test_bf16_autocast_and_channels_last_paths_run_on_cpu(tmp_path):
    """The CUDA defaults (bf16 autocast, channels_last) forced on, on CPU: finite, and they
    change the numbers (so the switches really act)."""
    fp32 = pretrain(tiny("byol", "train.epochs=1"), tmp_path / "fp32", tracking=None, progress=False)
    fast = pretrain(tiny("byol", "train.epochs=1", "train.precision=bf16", "train.channels_last=on"),
                    tmp_path / "bf16", tracking=None, progress=False)
    assert fast.metrics["final/train_loss"] == fast.metrics["final/train_loss"]  # not NaN
    assert fast.metrics["final/train_loss"] != fp32.metrics["final/train_loss"]
