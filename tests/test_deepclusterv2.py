"""DeepCluster-v2: spherical k-means and the loss against naive float64 loops written from the
official code, the memory bank (filled before epoch 0, written by index), the epoch-start
clustering (prototypes = centroids, deterministic), frozen prototypes, multi-crop, exact resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods import StepContext, get_method
from sslbench.methods.base import TensorEpochData
from sslbench.methods.deepclusterv2 import (
    DeepClusterV2Config,
    _no_single_tail,
    deepclusterv2_loss,
    nearest_centroid,
    spherical_kmeans,
)

# ------------------------------------------------------------------------------------------------
# Naive references (Python loops in float64, from main_deepclusterv2.py)


def naive_kmeans(x: list[list[float]], start: list[int], iterations: int) -> tuple[list[list[float]], list[int]]:
    """cluster_memory: centroids = the start rows; ``iterations`` x (E: argmax dot product, first
    index on ties; M: non-empty centroids <- normalised mean); a last E-step."""
    cents = [list(x[i]) for i in start]
    for it in range(iterations + 1):
        assign = []
        for row in x:
            dots = [sum(a * b for a, b in zip(row, c)) for c in cents]
            assign.append(max(range(len(cents)), key=lambda k: (dots[k], -k)))
        if it == iterations:
            return cents, assign
        for k in range(len(cents)):
            members = [x[i] for i in range(len(x)) if assign[i] == k]
            if members:
                mean = [sum(col) / len(members) for col in zip(*members)]
                norm = math.sqrt(sum(v * v for v in mean))
                cents[k] = [v / norm for v in mean]
    raise AssertionError


def naive_loss(scores, targets, tau: float) -> float:
    """1/H sum_h mean over (view, image) of -log softmax(s / tau)[target]."""
    total = 0.0
    for h, views in enumerate(scores):
        terms = []
        for v in views:
            for b, row in enumerate(v.double().tolist()):
                log_norm = math.log(sum(math.exp(s / tau) for s in row))
                terms.append(log_norm - row[int(targets[h, b])] / tau)
        total += sum(terms) / len(terms)
    return total / len(scores)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """``allclose`` with equal shapes and dtypes (torch.testing.assert_close's first call imports
    torch.distributed.tensor: seconds on this CPU)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual, expected)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max()


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


# ------------------------------------------------------------------------------------------------
# Spherical k-means


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_kmeans_matches_the_naive_loop(iterations):
    x = _unit_rows(30, 4, seed=0)
    cents, assign = spherical_kmeans(x, 5, iterations, torch.Generator().manual_seed(7))
    start = torch.randperm(30, generator=torch.Generator().manual_seed(7))[:5].tolist()
    ref_c, ref_a = naive_kmeans(x.tolist(), start, iterations)
    assert assign.tolist() == ref_a
    _close(cents, torch.tensor(ref_c, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    _close(cents.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.equal(nearest_centroid(x, cents), assign)  # the last E-step's centroids


def test_kmeans_recovers_separable_clusters():
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(50)
    x = F.normalize(centres[labels] + 0.05 * torch.randn(200, 16, generator=g), dim=1)
    cents, assign = spherical_kmeans(x, 4, 10, torch.Generator().manual_seed(0))
    # One cluster per true group (a permutation), each centroid at its group's direction.
    mapping = {int(labels[i]): int(assign[i]) for i in range(200)}
    assert sorted(mapping.values()) == [0, 1, 2, 3]
    assert all(int(assign[i]) == mapping[int(labels[i])] for i in range(200))
    for true, k in mapping.items():
        assert float(cents[k] @ centres[true]) > 0.99


def test_kmeans_empty_clusters_keep_their_centroid_and_k_may_exceed_n():
    x = _unit_rows(3, 4, seed=2).float()
    cents, assign = spherical_kmeans(x, 5, 4, torch.Generator().manual_seed(0))
    assert cents.shape == (5, 4) and assign.shape == (3,)
    assert sorted(assign.tolist()) == [0, 1, 2]  # the 3 distinct rows take the first 3 centroids
    for k in (3, 4):  # duplicates of drawn rows: empty, unchanged
        assert any(torch.allclose(cents[k], row) for row in x)


def test_kmeans_is_deterministic_and_ignores_autocast():
    x = _unit_rows(40, 8, seed=3).float()
    a = spherical_kmeans(x, 6, 5, torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = spherical_kmeans(x, 6, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and b[0].dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# Loss


def test_loss_matches_the_naive_loop_over_clusterings_and_crops():
    g = torch.Generator().manual_seed(5)
    scores = [[torch.randn(3, k, generator=g, dtype=torch.float64) for _ in range(4)] for k in (5, 7)]
    targets = torch.stack([torch.randint(0, 5, (3,), generator=g), torch.randint(0, 7, (3,), generator=g)])
    loss = deepclusterv2_loss(scores, targets, 0.1)
    assert loss.item() == pytest.approx(naive_loss(scores, targets, 0.1), rel=1e-10)


def test_loss_gradient_closed_form():
    """dL/ds_{h,v} = (softmax(s_{h,v} / tau) - onehot(a_h)) / (tau * V * B * H)."""
    g = torch.Generator().manual_seed(6)
    scores = [[torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
              for _ in range(2)]
    targets = torch.randint(0, 6, (2, 4), generator=g)
    tau = 0.2
    deepclusterv2_loss(scores, targets, tau).backward()
    for h, views in enumerate(scores):
        for s in views:
            expected = torch.softmax(s.detach() / tau, dim=1) - F.one_hot(targets[h], 6)
            _close(s.grad, expected / (tau * 3 * 4 * 2))


# ------------------------------------------------------------------------------------------------
# The method

N, A = 24, 2  # training images, banked global crops



def _method(**overrides):
    args = dict(proj_hidden_dim=16, proj_dim=8, num_prototypes=(4, 5, 3), memory_batch_size=10, **overrides)
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return get_method("deepclusterv2").build(backbone, dim, args, num_samples=N)


DATA = TensorEpochData(torch.randn(N, 1, 16, 16, generator=torch.Generator().manual_seed(1)))


def _views(step: int, local: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    return [torch.randn(6, 1, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(6, 1, 8, 8, generator=g) for _ in range(local)]


def _ctx(step: int, steps_per_epoch: int = 2) -> StepContext:
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(step))[:6]
    return StepContext(step=step, total_steps=100, steps_per_epoch=steps_per_epoch, indices=idx, seed=3)


def _step(method, step: int, local: int = 0):
    """One engine step (the epoch's clustering first); plain SGD by hand (a torch optimiser's
    first use imports torch._dynamo: seconds on this CPU)."""
    ctx = _ctx(step)
    if step % ctx.steps_per_epoch == 0:
        method.on_epoch_start(StepContext(step=step, total_steps=100, steps_per_epoch=2, seed=3), DATA)
    out = method(_views(step, local), ctx)
    method.zero_grad(set_to_none=True)
    out.loss.backward()
    method.before_optimizer_step(ctx)
    with torch.no_grad():
        for group in method.param_groups():
            for p in group["params"]:
                if p.grad is not None:
                    p -= 0.05 * p.grad
    method.on_step_end(out, ctx)
    return out


def test_config_validation():
    for bad in ({"temperature": 0.0}, {"num_prototypes": ()}, {"num_prototypes": (3, 0)},
                {"kmeans_iters": -1}, {"num_assign_crops": 0}, {"memory_batch_size": 0}):
        with pytest.raises(ValueError):
            DeepClusterV2Config(**bad)
    assert DeepClusterV2Config(num_prototypes=[2, 3]).num_prototypes == (2, 3)  # JSON gives a list


def test_epoch_0_fills_the_bank_then_clusters_it_into_the_prototypes():
    method = _method()
    reference = copy.deepcopy(method)
    method.eval()
    logs = method.on_epoch_start(StepContext(step=0, total_steps=100, steps_per_epoch=2, seed=3), DATA)
    assert not method.training  # its mode is restored
    assert bool(method.bank_ready) and 0 < logs["kmeans_used_clusters"] <= 1
    # The bank: every image's projection (BN in training mode, batches of memory_batch_size).
    reference.train()
    with torch.no_grad():
        z = torch.cat([reference.project(x) for x, _ in DATA.batches(10)])
    for a in range(A):
        _close(method.bank[a], z)
    # Clustering h: k-means of bank h % 2 from the (seed, epoch 0, h) draw; prototypes = centroids.
    for h, (k, protos) in enumerate(zip((4, 5, 3), method.prototypes())):
        g = StepContext(step=0, steps_per_epoch=2, seed=3).generator("cpu", stream=h)
        cents, assign = spherical_kmeans(method.bank[h % A], k, 10, g)
        assert torch.equal(protos, cents) and torch.equal(method.assignments[h], assign)


def test_on_epoch_start_twice_from_the_same_state_gives_identical_assignments():
    method = _method()
    for step in range(2):  # epoch 0 (bank filled, clustered, then written by the steps)
        _step(method, step)
    twin = copy.deepcopy(method)
    ctx = StepContext(step=2, total_steps=100, steps_per_epoch=2, seed=3)
    method.on_epoch_start(ctx, DATA)
    twin.on_epoch_start(ctx, DATA)
    for key, value in method.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key
    # Another epoch draws other starting centroids (the draw is seeded by the epoch).
    other = copy.deepcopy(twin)
    other.on_epoch_start(StepContext(step=4, total_steps=100, steps_per_epoch=2, seed=3), DATA)
    assert any(not torch.equal(p, q) for p, q in zip(other.prototypes(), method.prototypes()))


def test_loss_is_the_cross_entropy_of_every_crop_to_its_images_clusters():
    method = _method()
    method.on_epoch_start(StepContext(seed=3), DATA)
    views, ctx = _views(0, local=2), _ctx(0)
    out = method(views, ctx)
    with torch.no_grad():  # BN sees the views of one resolution together, as in the method
        z = list(method.project(torch.cat(views[:2])).chunk(2)) + list(method.project(torch.cat(views[2:])).chunk(2))
        scores = [[v @ c.T for v in z] for c in method.prototypes()]
    expected = naive_loss(scores, method.assignments[:, ctx.indices], 0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="banks 2 global crops"):
        method([torch.randn(6, 1, 16, 16), torch.randn(6, 1, 8, 8)], ctx)


def test_the_fill_pass_merges_a_last_batch_of_one_image():
    """Batch norm in training mode cannot normalise a batch of one."""
    sizes = [x.shape[0] for x, _ in _no_single_tail(TensorEpochData(torch.zeros(21, 1, 2, 2)).batches(10))]
    assert sizes == [10, 11]
    assert [x.shape[0] for x, _ in _no_single_tail(DATA.batches(10))] == [10, 10, 4]


def test_a_step_before_the_first_clustering_is_an_error():
    """The engine clusters before every epoch; a caller that skips on_epoch_start is told so."""
    method = _method()
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method(_views(0), _ctx(0))


def test_prototypes_are_untrained_buffers_and_the_bank_takes_the_steps_projections():
    method = _method()
    assert not any(n.startswith(("prototypes", "bank", "assignments")) for n, _ in method.named_parameters())
    _step(method, 0, local=1)  # clusters, then one step
    protos = [p.clone() for p in method.prototypes()]
    bank_before = method.bank.clone()
    out = _step(method, 1, local=1)
    assert all(torch.equal(p, q) for p, q in zip(protos, method.prototypes()))  # only k-means sets them
    idx = _ctx(1).indices
    for a in range(A):  # global crop a's forward (pre-step) projections, by dataset index
        _close(method.bank[a, idx], out.state["z"][a])
    rest = torch.ones(N, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(method.bank[:, rest], bank_before[:, rest])


def test_resume_across_an_epoch_boundary_is_exact():
    method = _method()
    for step in range(2):
        _step(method, step, local=1)
    saved = copy.deepcopy(method.state_dict())
    a = [_step(method, step, local=1).loss.item() for step in (2, 3)]
    resumed = _method()
    resumed.load_state_dict(saved)
    b = [_step(resumed, step, local=1).loss.item() for step in (2, 3)]  # re-clusters at step 2
    assert a == b
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key
