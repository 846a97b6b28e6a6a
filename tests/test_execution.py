"""The engine's speed switches (train.checkpoint_every, async checkpoints, deferred finite checks,
foreach LARS, deterministic mode, cuDNN benchmark, torch.compile) and the no-host-sync step.

Each switch changes speed only: these tests hold exact resume, the config hash and the numbers
fixed while they are on, and count the host conversions that sslbench code makes per step.
"""

import sys

import pytest
import torch

from sslbench.benchmark.checkpoint import CheckpointWriter, load_checkpoint
from sslbench.benchmark.config import EXECUTION_KEYS
from sslbench.benchmark.engine import pretrain
from sslbench.benchmark.errors import CheckpointError, ConfigError, NonFiniteLossError
from sslbench.benchmark.execution import compile_modules, execution_settings
from sslbench.benchmark.optim import LARS
from sslbench.benchmark.recipes import resolve

TINY = ["data.dataset=synthetic", "data.batch_size=32", "augment=simclr-small", "train.device=cpu"]
HEADS = {"simclr": ["method.proj_hidden_dim=32", "method.proj_dim=16"],
         "mocov2": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.queue_size=64"],
         "byol": ["method.proj_hidden_dim=32", "method.proj_dim=16", "method.pred_hidden_dim=32"]}


def tiny(method, *extra):
    return resolve(f"{method}-quick", TINY + HEADS.get(method, []) + list(extra))


def _weights(path):
    return load_checkpoint(path)["model"]


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ------------------------------------------------------------------------------------------------
# config


def test_execution_settings_stay_out_of_hash_and_stored_config():
    base = tiny("simclr", "train.epochs=2")
    stored = base.to_dict()["train"]
    assert not set(EXECUTION_KEYS[2:]) & set(stored)  # the new keys are absent while default
    fast = tiny("simclr", "train.epochs=2", "train.checkpoint_every=5", "train.async_checkpoint=on",
                "train.finite_check_every=7", "train.compile=default", "train.cudnn_benchmark=off",
                "train.deterministic=true", "train.foreach=on")
    assert fast.hash() == base.hash()
    assert fast.to_dict()["train"]["checkpoint_every"] == 5  # recorded once set
    assert tiny("simclr", "train.epochs=3").hash() != base.hash()


@pytest.mark.parametrize("override", ["train.checkpoint_every=0", "train.async_checkpoint=maybe",
                                      "train.compile=max", "train.finite_check_every=0",
                                      "train.foreach=yes", "train.cudnn_benchmark=1"])
def test_bad_execution_settings_are_clear_errors(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        tiny("simclr", override)


# ------------------------------------------------------------------------------------------------
# checkpoints: cadence, async writes, exact resume


class _Killed(Exception):
    pass


def _kill_at(monkeypatch, method_cls, at_step):
    original = method_cls.training_step

    def dying(self, views, ctx):
        if ctx.step == at_step:
            raise _Killed(f"killed at step {at_step}")
        return original(self, views, ctx)

    monkeypatch.setattr(method_cls, "training_step", dying)


@pytest.mark.parametrize("every,async_", [(1, "on"), (2, "on"), (3, "off"), (2, "off")])
def test_killed_run_resumes_exactly_with_any_checkpoint_cadence(tmp_path, monkeypatch, every, async_):
    from sslbench.methods.mocov2 import MoCoV2

    switches = [f"train.checkpoint_every={every}", f"train.async_checkpoint={async_}"]
    cfg = tiny("mocov2", "train.epochs=4", *switches)
    full = pretrain(tiny("mocov2", "train.epochs=4"), tmp_path / "full", tracking=None, progress=False)
    steps = full.derived.steps_per_epoch
    with monkeypatch.context() as m:
        _kill_at(m, MoCoV2, 3 * steps + 1)  # killed in the 4th epoch
        with pytest.raises(_Killed):
            pretrain(cfg, tmp_path / "part", tracking=None, progress=False)
    saved = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 3 // every * every  # the last checkpoint due before the kill
    resumed = pretrain(cfg, tmp_path / "part", resume=True, tracking=None, progress=False)
    _same_weights(full.checkpoint, resumed.checkpoint)
    losses = [[h["train/loss"] for h in load_checkpoint(r.checkpoint)["history"]] for r in (full, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_early_stop_writes_its_checkpoint_synchronously(tmp_path):
    cfg = tiny("simclr", "train.epochs=5", "train.checkpoint_every=4", "train.async_checkpoint=on")
    part = pretrain(cfg, tmp_path / "r", tracking=None, progress=False, stop_after_epochs=2)
    assert load_checkpoint(part.checkpoint)["epoch"] == 2  # not due by the cadence: the stop writes it
    done = pretrain(cfg, tmp_path / "r", resume=True, tracking=None, progress=False)
    assert load_checkpoint(done.checkpoint)["epoch"] == 5 and load_checkpoint(done.checkpoint)["finished"]


@pytest.mark.slow
def test_mlflow_gets_only_saved_epochs_and_each_once(tmp_path, monkeypatch):
    from sslbench.benchmark.engine import Tracking
    from sslbench.methods.simclr import SimCLR
    from sslbench.results.aggregate import load_runs

    tracking = Tracking(f"sqlite:///{tmp_path / 'mlruns.db'}", "exec")
    cfg = tiny("simclr", "train.epochs=4", "train.checkpoint_every=2", "train.async_checkpoint=on")
    steps = 256 // 32
    with monkeypatch.context() as m:
        _kill_at(m, SimCLR, 3 * steps - 1)  # in epoch 3: epochs 1-2 are saved, 3 is lost
        with pytest.raises(_Killed):
            pretrain(cfg, tmp_path / "r", tracking=tracking, progress=False)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.uri)
    run_id = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    pretrain(cfg, tmp_path / "r", resume=True, tracking=tracking, progress=False)
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [1, 2, 3, 4]
    assert len(load_runs(tracking_uri=tracking.uri, experiment="exec", kind="pretrain")) == 1


def test_checkpoint_writer_snapshots_waits_and_reports_failures(tmp_path):
    writer = CheckpointWriter(asynchronous=True)
    weights = torch.arange(6.0)
    writer.save(tmp_path / "a.pt", {"epoch": 3, "model": {"w": weights}, "history": [{"x": 1.0}]})
    weights.add_(100)  # training goes on while the write is in flight: the file has the snapshot
    writer.wait()
    assert writer.durable_epoch == 3
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["model"]["w"], torch.arange(6.0))
    (tmp_path / "blocked").write_text("a file where the folder should be")
    writer.save(tmp_path / "blocked" / "b.pt", {"epoch": 4, "model": {"w": weights}})
    with pytest.raises(CheckpointError, match="background"):
        writer.wait()
    assert writer.durable_epoch == 3


# ------------------------------------------------------------------------------------------------
# deferred finite checks


@pytest.mark.parametrize("every", [1, 3, 1000])
def test_deferred_finite_check_names_the_first_bad_step(tmp_path, monkeypatch, every):
    from sslbench.methods.simclr import SimCLR

    original = SimCLR.training_step

    def poisoned(self, views, ctx):
        out = original(self, views, ctx)
        if ctx.step >= 10:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    cfg = tiny("simclr", "train.epochs=3", f"train.finite_check_every={every}")
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 10 \(epoch 2, lr"):
        pretrain(cfg, tmp_path / "r", tracking=None, progress=False)
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 1  # the last good one


# ------------------------------------------------------------------------------------------------
# no host synchronisation per step


def _count_host_reads(monkeypatch):
    """Counts Tensor -> Python conversions made by sslbench code (frames in the sslbench package)."""
    calls = {"n": 0, "where": []}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module.startswith("sslbench"):
                calls["n"] += 1
                calls["where"].append(f"{module}:{frame.f_lineno} {name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "__index__"):
        counting(name)
    return calls


STEP_METHODS = ["simclr", "mocov2", "byol", "barlowtwins", "simsiam", "vicreg", "dino", "swav", "nnclr",
                "mocov3", "instdisc", "invaspread"]


@pytest.mark.parametrize("method", STEP_METHODS)
def test_training_steps_make_no_host_reads(tmp_path, monkeypatch, method):
    """Conversions to Python in sslbench code do not grow with the number of steps: a run of 6
    steps makes as many as a run of 2 (both stop inside the 8-step epoch; conversions happen at
    epoch boundaries and every train.finite_check_every steps only)."""
    counts = []
    for i, steps in enumerate((2, 6)):
        cfg = resolve(f"{method}-quick", ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=1",
                                          "train.device=cpu", "train.finite_check_every=1000"])
        with monkeypatch.context() as m:
            calls = _count_host_reads(m)
            pretrain(cfg, tmp_path / f"r{i}", tracking=None, progress=False, max_steps=steps)
        counts.append((calls["n"], calls["where"]))
    assert counts[0][0] == counts[1][0], "per-step host reads:\n" + "\n".join(
        sorted(set(counts[1][1]) - set(counts[0][1])) or counts[1][1][-20:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU test above counts reads)")
def test_cuda_step_has_no_synchronisation(tmp_path):
    from sslbench.benchmark.engine import pretrain as run

    seen = []

    def hook(step):
        if step == 3:
            torch.cuda.set_sync_debug_mode("error")
            seen.append(step)
        if step == 6:
            torch.cuda.set_sync_debug_mode(0)

    cfg = resolve("simclr-quick", ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=1",
                                   "train.device=cuda", "train.finite_check_every=1000"])
    try:
        run(cfg, tmp_path / "r", tracking=None, progress=False, max_steps=7, step_hook=hook)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert seen


# ------------------------------------------------------------------------------------------------
# optimiser, determinism, compile


def test_foreach_lars_matches_the_per_parameter_loop():
    torch.manual_seed(0)
    shapes = [(8, 4), (8,), (3, 3, 2, 2), (5,)]
    init = [torch.randn(s) for s in shapes]
    runs = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        groups = [{"params": params[:3], "weight_decay": 1e-2},
                  {"params": params[3:], "lars_exclude": True, "weight_decay": 0.0}]
        opt = LARS(groups, lr=0.5, momentum=0.9, eta=0.02, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            params[2].grad = None if _ == 1 else params[2].grad  # a parameter without gradient
            opt.step()
        runs.append([p.detach() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_deterministic_mode_is_restored_and_changes_nothing_on_cpu(tmp_path):
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    a = pretrain(tiny("simclr", "train.epochs=1"), tmp_path / "a", tracking=None, progress=False)
    b = pretrain(tiny("simclr", "train.epochs=1", "train.deterministic=true"), tmp_path / "b",
                 tracking=None, progress=False)
    _same_weights(a.checkpoint, b.checkpoint)
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before
    cfg = tiny("simclr", "train.cudnn_benchmark=on")
    with execution_settings(cfg.train, torch.device("cpu")):
        assert torch.backends.cudnn.benchmark
    with execution_settings(tiny("simclr", "train.deterministic=true", "train.cudnn_benchmark=on").train,
                            torch.device("cuda")):
        assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark == before[0]


def test_compile_modules_keeps_parameter_names():
    from sslbench.benchmark.engine import build_method

    method = build_method(tiny("simclr"), 1, 16)
    keys = list(method.state_dict())
    names = compile_modules(method, "default")
    assert "encoder" in names and list(method.state_dict()) == keys
    assert compile_modules(method, "off") == []
    with pytest.raises(ConfigError):
        compile_modules(method, "max-autotune")


@pytest.mark.slow
def test_compiled_run_trains_like_eager_and_reports_compile_time(tmp_path):
    eager = pretrain(tiny("simclr", "train.epochs=1"), tmp_path / "e", tracking=None, progress=False)
    comp = pretrain(tiny("simclr", "train.epochs=1", "train.compile=default"), tmp_path / "c",
                    tracking=None, progress=False)
    history = load_checkpoint(comp.checkpoint)["history"]
    assert history[0]["train/compile_time_s"] > 0
    le, lc = (load_checkpoint(r.checkpoint)["history"][0]["train/loss"] for r in (eager, comp))
    assert abs(le - lc) < 1e-3 * abs(le)  # the same computation, rounded differently
    from sslbench.benchmark.engine import load_encoder

    encoder, _ = load_encoder(comp.checkpoint)  # a compiled run's checkpoint loads as any other
    assert encoder(torch.zeros(2, 1, 16, 16)).shape[0] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU resume is exact without it)")
@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol"])
def test_cuda_resume_is_bit_identical_with_deterministic(tmp_path, method):
    extra = ["train.device=cuda", "train.deterministic=true", "train.async_checkpoint=on", "train.checkpoint_every=1"]
    cfg = resolve(f"{method}-quick", ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=3",
                                      "augment=simclr-small", *HEADS[method], *extra])
    full = pretrain(cfg, tmp_path / "full", tracking=None, progress=False)
    pretrain(cfg, tmp_path / "part", tracking=None, progress=False, stop_after_epochs=1)
    resumed = pretrain(cfg, tmp_path / "part", resume=True, tracking=None, progress=False)
    _same_weights(full.checkpoint, resumed.checkpoint)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_run_trains_with_every_switch(tmp_path):
    cfg = resolve("simclr-quick", ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=2",
                                   "train.device=cuda", "train.precision=bf16", "train.cudnn_benchmark=on",
                                   "train.foreach=on", "train.async_checkpoint=on", "optim.name=lars"])
    result = pretrain(cfg, tmp_path / "r", tracking=None, progress=False)
    history = load_checkpoint(result.checkpoint)["history"]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history)


def test_bf16_views_only_on_cuda_bf16_for_methods_whose_views_enter_the_networks():
    from sslbench.benchmark.engine import _view_dtype, build_method

    simclr = build_method(tiny("simclr"), 1, 16)
    rotation = build_method(resolve("rotation-quick", TINY), 1, 16)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _view_dtype(tiny("simclr"), cuda, simclr) == torch.bfloat16
    assert _view_dtype(tiny("simclr", "train.precision=fp32"), cuda, simclr) == torch.float32
    assert _view_dtype(tiny("simclr", "train.precision=bf16"), cpu, simclr) == torch.float32
    assert _view_dtype(tiny("simclr"), cuda, rotation) == torch.float32  # a pretext task edits pixels
