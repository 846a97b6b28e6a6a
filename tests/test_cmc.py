"""CMC: the core-view and full-graph objectives against naive float64 loops written from the paper
(Eq. 2-5), with in-batch and memory-bank (softmax, NCE) negatives; the colour views are the
channel groups of the chosen space; the memory update, seeded negatives and the fixed Z; config
validation."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.color import lab_to_rgb
from sslbench.methods.base import InputSpec, StepContext
from sslbench.methods.cmc import (
    CMC,
    CMCConfig,
    cmc_in_batch_loss,
    cmc_memory_loss,
    contrast_in_batch,
    view_pairs,
)
from sslbench.methods.encoders import ColorSplitEncoder

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)

# ------------------------------------------------------------------------------------------------
# Naive references (Python loops in float64, from Tian et al. 2020 §3)


def naive_pairs(m: int, graph: str) -> list[tuple[int, int]]:
    """Eq. 4: view 1 with every other view; Eq. 5: every pair of views."""
    if graph == "core":
        return [(0, j) for j in range(1, m)]
    return list(itertools.combinations(range(m), 2))


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def unit(rows: torch.Tensor) -> list[list[float]]:
    return [[x / math.sqrt(sum(y * y for y in r)) for x in r] for r in rows.double().tolist()]


def naive_direction(a: list[list[float]], b: list[list[float]], tau: float) -> float:
    """Eq. 2 (softmax form): -1/B sum_i log(exp(a_i.b_i/tau) / sum_k exp(a_i.b_k/tau))."""
    total = 0.0
    for i, ai in enumerate(a):
        e = [math.exp(dot(ai, bk) / tau) for bk in b]
        total -= math.log(e[i] / sum(e))
    return total / len(a)


def naive_in_batch(z: list[torch.Tensor], tau: float, graph: str) -> float:
    u = [unit(v) for v in z]
    return sum(naive_direction(u[i], u[j], tau) + naive_direction(u[j], u[i], tau)
               for i, j in naive_pairs(len(z), graph))


def naive_memory(z, memory, cols, tau, graph, loss, z_norm=None, n=0) -> float:
    """Direction i -> j: anchor z^i_b against view j's memory rows cols[b] (own row first).
    softmax: -log(e_0 / sum_k e_k); NCE (Eq. 12): P = e / Z, h = P / (P + K/N),
    -(log h_0 + sum_{k>0} log(1 - h_k))."""
    total = 0.0
    k = len(cols[0]) - 1
    for i, j in naive_pairs(len(z), graph):
        for a, b in ((i, j), (j, i)):
            for row, c in zip(z[a].double().tolist(), cols.tolist()):
                e = [math.exp(dot(row, memory[b][col].tolist()) / tau) for col in c]
                if loss == "softmax":
                    total -= math.log(e[0] / sum(e)) / len(cols)
                    continue
                for pos, ek in enumerate(e):
                    p = ek / z_norm[a][b]
                    h = p / (p + k / n)
                    total -= (math.log(h) if pos == 0 else math.log(1 - h)) / len(cols)
    return total


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    """Elementwise equal up to ``tol`` (relative and absolute), shapes equal."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


def embeddings(m: int, b: int = 5, d: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(m)]


# ------------------------------------------------------------------------------------------------
# Pair sets and the in-batch objective


def test_view_pairs_core_and_full_graph():
    assert view_pairs(2, "core") == view_pairs(2, "full") == [(0, 1)]
    assert view_pairs(4, "core") == [(0, 1), (0, 2), (0, 3)]
    assert view_pairs(4, "full") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    with pytest.raises(ValueError):
        view_pairs(1, "core")


@pytest.mark.parametrize("m, graph", [(2, "core"), (3, "core"), (3, "full"), (4, "full")])
def test_in_batch_loss_matches_the_naive_loop(m, graph):
    z = embeddings(m)
    got = cmc_in_batch_loss(z, 0.07, graph)
    assert got.item() == pytest.approx(naive_in_batch(z, 0.07, graph), rel=1e-10)


def test_two_views_core_equals_full_and_is_symmetric():
    z = embeddings(2, seed=1)
    core = cmc_in_batch_loss(z, 0.1, "core")
    assert close(core, cmc_in_batch_loss(z, 0.1, "full"))
    assert close(core, cmc_in_batch_loss(z[::-1], 0.1, "core"))  # L(V1,V2) = L(V2,V1)


def test_three_views_full_graph_adds_the_pair_the_core_view_leaves_out():
    z = embeddings(3, seed=2)
    core, full = cmc_in_batch_loss(z, 0.1, "core"), cmc_in_batch_loss(z, 0.1, "full")
    assert close(full - core, cmc_in_batch_loss([z[1], z[2]], 0.1, "core"))
    # the core view's loss is the sum of the two-view losses of view 1 with each other view
    assert close(core, cmc_in_batch_loss(z[:2], 0.1, "core") + cmc_in_batch_loss(z[::2], 0.1, "core"))


def test_in_batch_direction_with_global_candidates_is_the_joint_batch_row():
    """Under data parallelism an anchor's candidates are the global batch's: this rank's rows at
    ``offset`` give the same per-anchor terms as one process on the joint batch."""
    a, b = embeddings(2, b=6, seed=3)
    whole = [-F.log_softmax(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1, dim=1)[i, i]
             for i in range(6)]
    got = contrast_in_batch(a[2:4], b, 0.1, offset=2)
    assert close(got, (whole[2] + whole[3]) / 2)


# ------------------------------------------------------------------------------------------------
# Memory-bank objective


@pytest.mark.parametrize("n", [7, 500])  # bank scored whole then gathered / sampled rows gathered
@pytest.mark.parametrize("loss, graph", [("softmax", "core"), ("softmax", "full"), ("nce", "full")])
def test_memory_loss_matches_the_naive_loop(n, loss, graph):
    g = torch.Generator().manual_seed(4)
    z = [F.normalize(v, dim=1) for v in embeddings(3, b=3, seed=5)]
    memory = F.normalize(torch.randn(3, n, 4, generator=g, dtype=torch.float64), dim=2)
    cols = torch.cat([torch.tensor([[0], [2], [5]]), torch.randint(0, n, (3, 4), generator=g)], dim=1)
    z_norm = torch.rand(3, 3, generator=g, dtype=torch.float64) * 50 + 1
    got = cmc_memory_loss(z, memory, cols, 0.07, graph, loss, log_z=z_norm.log(), num_samples=n)
    want = naive_memory(z, memory, cols, 0.07, graph, loss, z_norm.tolist(), n)
    assert got.item() == pytest.approx(want, rel=1e-10)


# ------------------------------------------------------------------------------------------------
# The method


def build(space="lab", groups="0|1,2", num_samples=30, **kw):
    torch.manual_seed(0)
    enc = ColorSplitEncoder("small-cnn", InputSpec(3, 16, MEAN, STD), space, groups)
    args = {"space": space, "groups": groups, "embed_dim": 8, "num_negatives": 5, "temperature": 0.1, **kw}
    return CMC(enc, sum(enc.dims), CMCConfig(**args), num_samples=num_samples).double()


def rgb_views(rgb: torch.Tensor) -> list[torch.Tensor]:
    m, s = torch.tensor(MEAN, dtype=rgb.dtype).view(1, 3, 1, 1), torch.tensor(STD, dtype=rgb.dtype).view(1, 3, 1, 1)
    return [(rgb - m) / s]


def test_views_are_the_colour_channel_groups():
    """Lab, L | ab: two images with the same lightness and different colours have the same L-view
    embedding and different ab-view embeddings (and the other way round)."""
    method = build().eval()
    g = torch.Generator().manual_seed(6)
    lab = torch.cat([torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64) * 60 + 20,
                     (torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64) - 0.5) * 20], dim=1)
    recolour = lab.clone()
    recolour[:, 1:] = (torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64) - 0.5) * 20
    relight = lab.clone()
    relight[:, :1] = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64) * 60 + 20
    with torch.no_grad():
        base, col, light = (method.embed(rgb_views(lab_to_rgb(x))[0]) for x in (lab, recolour, relight))
    assert close(col[0], base[0], tol=1e-6)  # L unchanged
    assert (col[1] - base[1]).abs().max() > 1e-3
    assert close(light[1], base[1], tol=1e-6)  # ab unchanged
    assert (light[0] - base[0]).abs().max() > 1e-3


def test_three_rgb_views_each_see_one_channel():
    method = build(space="rgb", groups="0|1|2", graph="full").eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    y = x.clone()
    y[:, 2] = torch.rand(2, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        zx, zy = method.embed(rgb_views(x)[0]), method.embed(rgb_views(y)[0])
    assert len(zx) == 3
    assert close(zx[0], zy[0]) and close(zx[1], zy[1])
    assert (zx[2] - zy[2]).abs().max() > 1e-3


@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_method_loss_memory_update_and_fixed_z(loss):
    method = build(graph="full", loss=loss)
    idx = torch.tensor([4, 0, 29])
    x = rgb_views(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    ctx = StepContext(step=3, seed=11, indices=idx)
    out = method.training_step(x, ctx)
    z = [v.detach() for v in method.embed(x[0])]
    cols = torch.cat([idx[:, None], torch.randint(0, 30, (3, 5), generator=ctx.generator())], dim=1)
    bank = method.memory.clone()
    z_norm = None
    if loss == "nce":  # Z^{a,b} = N * mean(exp(s^{a,b})) on the first batch (the repo's estimate)
        z_norm = [[30 * math.fsum(math.exp(dot(z[a][r].tolist(), bank[b][c].tolist()) / 0.1)
                                  for r in range(3) for c in cols[r].tolist()) / 18
                   for b in range(2)] for a in range(2)]
        assert out.state["normalizer"][0, 1].item() == pytest.approx(z_norm[0][1], rel=1e-9)
        assert out.state["normalizer"][1, 0].item() == pytest.approx(z_norm[1][0], rel=1e-9)
    want = naive_memory(z, bank, cols, 0.1, "full", loss, z_norm, 30)
    assert out.loss.item() == pytest.approx(want, rel=1e-9)

    method.on_step_end(out, ctx)  # v <- normalize(0.5 v + 0.5 f) on the batch's rows of each view
    for v in range(2):
        assert close(method.memory[v, idx], F.normalize(0.5 * bank[v, idx] + 0.5 * z[v], dim=1))
        others = torch.ones(30, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(method.memory[v, others], bank[v, others])
    if loss == "nce":  # Z is fixed after the first step
        z01 = float(method.normalizer[0, 1])
        out2 = method.training_step(x, StepContext(step=4, seed=11, indices=idx))
        assert "normalizer" not in out2.state and float(method.normalizer[0, 1]) == z01


def test_in_batch_method_loss_and_no_bank():
    method = build(groups="0|1|2", negatives="batch", loss="softmax", graph="core", head="mlp", head_hidden_dim=16)
    assert method.memory.numel() == 0 and method.heads[2][0].out_features == 16
    x = rgb_views(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    out = method.training_step(x, StepContext(indices=torch.arange(4)))
    z = [v.detach() for v in method.embed(x[0])]
    assert out.loss.item() == pytest.approx(naive_in_batch(z, 0.1, "core"), rel=1e-9)


def test_encoder_spec_names_the_colour_split():
    cfg = CMCConfig(space="ycbcr", groups="0|1|2")
    spec = CMC.encoder_spec(cfg, InputSpec(3, 28, MEAN, STD))
    assert spec.name == "color-split" and dict(spec.args) == {"space": "ycbcr", "groups": "0|1|2"}


@pytest.mark.parametrize("bad, match", [
    ({"groups": "0"}, "at least two"),
    ({"groups": "0|0,1"}, "distinct channels"),
    ({"groups": "0|3"}, "distinct channels"),
    ({"groups": "L|ab"}, "0|1,2"),
    ({"space": "hsv"}, "space"),
    ({"graph": "star"}, "graph"),
    ({"negatives": "batch"}, "softmax"),  # NCE needs the memory bank
    ({"memory_momentum": 1.0}, "memory_momentum"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        CMCConfig(**bad)


def test_grayscale_data_is_refused_and_rgb_builds_the_colour_split():
    from sslbench.benchmark.engine import build_method
    from sslbench.benchmark.errors import ConfigError
    from sslbench.benchmark.recipes import resolve

    cfg = resolve("cmc-quick", ["method.groups=0|1|2", "method.graph=full"])
    with pytest.raises(ConfigError, match="colour"):
        build_method(cfg, 1, 28, num_samples=8)
    method = build_method(cfg, 3, 28, num_samples=8)
    assert isinstance(method.encoder, ColorSplitEncoder) and method.encoder.groups == [[0], [1], [2]]
    assert method.feature_dim == sum(method.encoder.dims)
