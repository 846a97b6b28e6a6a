"""Data parallelism on CPU: two gloo processes equal one process on the joint batch.

For every method whose loss couples the samples of a batch, with its opt-in gathering on (SimCLR
and its loss variants, SimCLR v2 with its memory, MoCo v2 and v3, Barlow Twins, VICReg, DINO's
centre), with MoCo v1's cross-rank shuffling BN, and for the per-sample losses (BYOL, SimSiam;
DDP's gradient average is all they need), one step under
``DistributedDataParallel`` on two ranks, each holding its contiguous half of the batch, gives
the loss (mean over ranks), the gradient of every parameter, the parameters after an optimiser
step, the EMA targets and MoCo's queue of one process on the joint batch.

Batch norm is the one layer whose output depends on how the batch is split: SyncBatchNorm makes
it split-invariant on CUDA but does not run on CPU, so these tests keep every BN in eval mode
(its affine parameters still train); the engine uses SyncBatchNorm on CUDA and per-rank BN
statistics on CPU. Everything runs in float64 so the tolerances can be tight.
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # spawn re-imports the workers by module name
ddp = importlib.import_module("ddp_helpers")

from sslbench.benchmark import datasets as D  # noqa: E402
from sslbench.benchmark.config import derive  # noqa: E402
from sslbench.benchmark.distributed import (  # noqa: E402
    DistEnv,
    gather_no_grad,
    gather_with_grad,
    mean_over_ranks,
    read_dist_env,
)
from sslbench.benchmark.errors import ConfigError, SSLBenchError  # noqa: E402
from sslbench.benchmark.recipes import resolve  # noqa: E402
from sslbench.methods.losses import nt_xent  # noqa: E402

TIGHT = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """One two-process run covering every case (one spawn: process start-up dominates)."""
    out = tmp_path_factory.mktemp("ddp")
    ddp.spawn(ddp.ddp_step_worker, list(ddp.CASES), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(ddp.WORLD_SIZE)]


LOCAL = [c for c in ddp.CASES if c.endswith(("-local", "-local-negatives"))]  # per-rank batches
EXACT = [c for c in ddp.CASES if c not in LOCAL]


@pytest.mark.parametrize("case", EXACT)
def test_two_ranks_equal_one_process_on_the_joint_batch(ddp_results, case):
    single = ddp.single_process_step(case)
    for rank, results in enumerate(ddp_results):
        got = results[case]
        torch.testing.assert_close(got["loss"], single["loss"], **TIGHT, msg=f"loss, rank {rank}")
        # every trainable parameter got a gradient, on every rank, equal to the joint-batch one
        assert set(got["grads"]) == set(single["grads"]) == single["trainable"]
        for name, grad in single["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, **TIGHT, msg=f"grad {name}, rank {rank}")
        # after the SGD step and on_step_end: parameters, EMA targets / key encoders, the queue
        assert got["state"].keys() == single["state"].keys()
        for key, value in single["state"].items():
            torch.testing.assert_close(got["state"][key], value, **TIGHT,
                                       msg=f"{key} after the step, rank {rank}")


@pytest.mark.parametrize("case", ["mocov2", "mocov2-asymmetric"])
def test_moco_queue_is_identical_on_every_rank(ddp_results, case):
    """The gathered keys make the replicas' queues bit-identical, in the joint batch's order."""
    queues = [r[case]["state"]["queue.features"] for r in ddp_results]
    assert all(torch.equal(q, queues[0]) for q in queues)
    views = 2 if case == "mocov2" else 1
    assert int(ddp_results[0][case]["state"]["queue.ptr"]) == views * ddp.BATCH
    single = ddp.single_process_step(case)["state"]["queue.features"]
    torch.testing.assert_close(queues[0], single, **TIGHT)
    assert not torch.equal(queues[0], ddp.build_case(case).queue.features), "keys were enqueued"


@pytest.mark.parametrize("case", LOCAL)
def test_without_gathering_each_rank_uses_its_own_batch(ddp_results, case):
    """``gather_distributed=False`` computes the batch-coupled terms (negatives, correlations,
    covariances, keys) on each rank's half: a different loss from the joint batch's."""
    got = ddp_results[0][case]["loss"]
    joint = ddp.single_process_step(case)["loss"]
    assert abs(float(got) - float(joint)) > 1e-8, case  # equal ones agree to ~1e-14 in float64


def test_byol_targets_are_identical_on_every_rank(ddp_results):
    states = [r["byol"]["state"] for r in ddp_results]
    targets = [k for k in states[0] if k.startswith(("target_encoder.", "target_projector."))]
    assert targets
    initial = ddp.build_case("byol").state_dict()
    assert any(not torch.equal(states[0][k], initial[k]) for k in targets), "the EMA step moved the target"
    for k in targets:
        assert torch.equal(states[0][k], states[1][k]), k


def test_simclr_without_gathering_uses_each_ranks_own_negatives(ddp_results):
    """``gather_distributed=False`` is a different loss: the mean over ranks of NT-Xent on each
    half, not NT-Xent on the joint batch. This is what the switch is for."""
    got = ddp_results[0]["simclr-local-negatives"]["loss"]
    joint = ddp.single_process_step("simclr-local-negatives")["loss"]
    assert abs(float(got) - float(joint)) > 1e-3
    method, n = ddp.build_case("simclr-local-negatives"), ddp.BATCH // ddp.WORLD_SIZE
    views = ddp.joint_views()
    halves = [method.training_step([v[r * n:(r + 1) * n] for v in views], ddp.StepContext(0, 10, 10)).loss for r in range(ddp.WORLD_SIZE)]
    torch.testing.assert_close(got, torch.stack(halves).mean().detach(), **TIGHT)


def test_pretrain_on_two_processes(tmp_path):
    """The engine under two gloo ranks: one checkpoint and one MLflow run (from rank 0), the
    derived world size and per-rank batch logged, the loss the same on every rank."""
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    overrides = ["data.dataset=synthetic", "data.batch_size=32", "train.epochs=1", "train.device=cpu",
                 "train.threads=1", "augment=simclr-small", "method.proj_hidden_dim=32",
                 "method.proj_dim=16"]
    ddp.spawn(ddp.pretrain_worker, overrides, str(tmp_path), uri)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(ddp.WORLD_SIZE)]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert all(r["checkpoint_existed"] for r in ranks), "no rank returns before the checkpoint exists"
    for r in ranks:
        assert r["derived"]["world_size"] == 2 and r["derived"]["batch_per_rank"] == 16
        assert r["derived"]["steps_per_epoch"] == 256 // 32  # steps count global batches
    assert ranks[0]["metrics"]["final/train_loss"] == ranks[1]["metrics"]["final/train_loss"]
    assert ranks[0]["run_id"] is not None and ranks[1]["run_id"] is None
    files = sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*")
                   if p.is_file())
    assert files == ["checkpoints/last.pt", "config.json"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_id == ranks[0]["run_id"]
    params = runs[0].data.params
    assert params["derived.world_size"] == "2" and params["derived.batch_per_rank"] == "16"
    assert params["data.batch_size"] == "32"  # the config (and its hash) keeps the global batch


# ----------------------------------------------------------------------------------------------
# Single-process pieces (no process group)


def test_global_nt_xent_averages_to_the_joint_loss():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(12, 5, generator=g, dtype=torch.float64) for _ in range(2))
    parts = [nt_xent(z1[i:i + 4], z2[i:i + 4], 0.2, all_z1=z1, all_z2=z2, offset=i) for i in (0, 4, 8)]
    torch.testing.assert_close(torch.stack(parts).mean(), nt_xent(z1, z2, 0.2), **TIGHT)
    # one rank holding everything is the plain loss
    torch.testing.assert_close(nt_xent(z1, z2, 0.2, all_z1=z1, all_z2=z2), nt_xent(z1, z2, 0.2), **TIGHT)
    with pytest.raises(ValueError, match="offset"):
        nt_xent(z1[:4], z2[:4], 0.2, all_z1=z1, all_z2=z2, offset=10)
    with pytest.raises(ValueError, match="together"):
        nt_xent(z1, z2, 0.2, all_z1=z1)


def test_collectives_are_the_identity_without_a_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x and gather_no_grad(x) is x and mean_over_ranks(x) is x


def test_rank_slices_of_a_global_batch_concatenate_to_it():
    ds = D.make_synthetic(split="train")
    full = [b.indices for b in ds.batches(32, shuffle=True, generator=torch.Generator().manual_seed(3),
                                          drop_last=True)]
    shards = [[b.indices for b in ds.batches(32, shuffle=True, generator=torch.Generator().manual_seed(3),
                                             drop_last=True, rank=r, world_size=4)] for r in range(4)]
    assert all(len(s) == len(full) for s in shards)
    for i, batch in enumerate(full):
        assert torch.equal(torch.cat([s[i] for s in shards]), batch)
    with pytest.raises(ValueError, match="drop_last"):
        next(ds.batches(32, rank=1, world_size=4))
    with pytest.raises(ValueError, match="split evenly"):
        next(ds.batches(30, rank=1, world_size=4, drop_last=True))


def test_derive_keeps_the_global_batch_and_checks_it_splits():
    cfg = resolve("simclr-quick", ["data.batch_size=256", "optim.base_lr=0.1"])
    one, four = derive(cfg, 10_000), derive(cfg, 10_000, world_size=4)
    assert (one.world_size, one.batch_per_rank, four.world_size, four.batch_per_rank) == (1, 256, 4, 64)
    assert one.lr == four.lr and one.total_steps == four.total_steps  # the global batch sets both
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        derive(cfg, 10_000, world_size=3)


def test_read_dist_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
                "SLURM_NTASKS", "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    assert read_dist_env() == DistEnv() and not DistEnv().distributed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SSLBenchError, match="MASTER_ADDR, MASTER_PORT is not set"):
        read_dist_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = read_dist_env()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (1, 1, 2, False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SSLBenchError, match="Inconsistent"):
        read_dist_env()


def test_read_dist_env_from_submitit_slurm_tasks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)  # absent again after the test, although export() sets them
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(SSLBenchError, match="not started by submitit"):
        read_dist_env()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    env = read_dist_env()
    assert (env.rank, env.local_rank, env.world_size) == (5, 1, 8)
    import os

    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"].isdigit()
