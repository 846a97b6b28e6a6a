"""The InfoNCE family: every variant against a float64 loop written from its paper, the relations
the papers state (DCL at tau+ = 0 is InfoNCE, HCL at beta = 0 is DCL, FlatNCE's value and gradient,
uniformity's minimiser), the global-negative path, and two training steps of SimCLR and MoCo v2
with each variant."""

import math

import pytest
import torch

from sslbench.benchmark.backbones import build_backbone
from sslbench.methods import StepContext, get_method
from sslbench.methods.losses import (
    LOSS_VARIANTS,
    WHOLE_BATCH_LOSSES,
    LossVariantConfig,
    align_uniform,
    binary_nce,
    contrastive_loss,
    debiased_contrastive,
    flat_nce,
    hard_negative_contrastive,
    info_nce,
    info_nce_from_similarities,
    moco_similarities,
    nt_xent,
    simclr_similarities,
)

TAU = 0.5


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def naive_pairs_simclr(z1, z2):
    """For each of the 2N anchors: cos with the other view, and the list of cos with every
    embedding of another image (SimCLR §2.1: the 2(N - 1) negatives)."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    out = []
    for i in range(n2):
        p = (i + n2 // 2) % n2
        out.append((_cos(z[i], z[p]), [_cos(z[i], z[k]) for k in range(n2) if k not in (i, p)]))
    return out


def naive_pairs_moco(q, k, queue):
    q, k, queue = q.double(), k.double(), queue.double()
    return [(_cos(q[i], k[i]), [_cos(q[i], r) for r in queue]) for i in range(q.shape[0])]


def naive_infonce(pairs, t):
    return sum(-math.log(math.exp(p / t) / (math.exp(p / t) + sum(math.exp(s / t) for s in negs)))
               for p, negs in pairs) / len(pairs)


def naive_nce(pairs, t):
    """InstDisc §3.2: h = P(i|v) / (P(i|v) + m P_n) with P(i|v) = exp(s / t) / Z, P_n = 1 / n, m
    noise samples and the Monte-Carlo Z = n / m sum_j exp(neg_j / t); n is arbitrary and cancels."""
    n_data = 1000.0
    total = 0.0
    for p, negs in pairs:
        m = len(negs)
        z = n_data / m * sum(math.exp(s / t) for s in negs)

        def h(s, m=m, z=z):
            ps = math.exp(s / t) / z
            return ps / (ps + m / n_data)

        total += -math.log(h(p)) - sum(math.log(1 - h(s)) for s in negs)
    return total / len(pairs)


def naive_hcl(pairs, t, tau_plus, beta):
    """Robinson et al.'s hard-sampling objective with one positive (beta = 0: Chuang et al.'s
    debiased objective)."""
    total = 0.0
    for p, negs in pairs:
        n = len(negs)
        w = [math.exp(beta * s / t) for s in negs]
        reweighted = n * sum(wj * math.exp(s / t) for wj, s in zip(w, negs)) / sum(w)
        ng = max((-tau_plus * n * math.exp(p / t) + reweighted) / (1 - tau_plus), n * math.exp(-1 / t))
        total += -math.log(math.exp(p / t) / (math.exp(p / t) + ng))
    return total / len(pairs)


def naive_align_uniform(pairs, alpha, t, lam):
    """Wang & Isola's L_align + lam L_uniform with ||u - v||^2 = 2 - 2 cos: the mean alignment over positive
    pairs plus lam x the log of the mean Gaussian potential over all pairs of different images."""
    align = sum((2 - 2 * p) ** (alpha / 2) for p, _ in pairs) / len(pairs)
    pots = [math.exp(-t * (2 - 2 * s)) for _, negs in pairs for s in negs]
    return align + lam * math.log(sum(pots) / len(pots))


def _simclr_inputs(seed=0, n=5, d=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _moco_inputs(seed=1, n=4, d=6, k=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g), torch.randn(n, d, generator=g),
            torch.randn(k, d, generator=g))


CASES = [
    ("infonce", lambda pos, neg: info_nce_from_similarities(pos, neg, TAU),
     lambda pairs: naive_infonce(pairs, TAU)),
    ("nce", lambda pos, neg: binary_nce(pos, neg, TAU), lambda pairs: naive_nce(pairs, TAU)),
    ("dcl", lambda pos, neg: debiased_contrastive(pos, neg, TAU, 0.1),
     lambda pairs: naive_hcl(pairs, TAU, 0.1, 0.0)),
    ("hcl", lambda pos, neg: hard_negative_contrastive(pos, neg, TAU, 0.1, 1.0),
     lambda pairs: naive_hcl(pairs, TAU, 0.1, 1.0)),
    ("align_uniform", lambda pos, neg: align_uniform(pos, neg, 2.0, 2.0, 1.0),
     lambda pairs: naive_align_uniform(pairs, 2.0, 2.0, 1.0)),
    ("align_uniform-a1", lambda pos, neg: align_uniform(pos, neg, 1.0, 3.0, 0.5),
     lambda pairs: naive_align_uniform(pairs, 1.0, 3.0, 0.5)),
]


@pytest.mark.parametrize("name, fn, naive", CASES, ids=[c[0] for c in CASES])
def test_variants_match_naive_loops_in_both_formulations(name, fn, naive):
    z1, z2 = _simclr_inputs()
    got = fn(*simclr_similarities(z1.double(), z2.double())).item()
    assert got == pytest.approx(naive(naive_pairs_simclr(z1, z2)), rel=1e-9)
    q, k, queue = _moco_inputs()
    got = fn(*moco_similarities(q.double(), k.double(), queue.double())).item()
    assert got == pytest.approx(naive(naive_pairs_moco(q, k, queue)), rel=1e-9)


def test_hcl_at_large_logits_is_stable_and_matches():
    """Low temperature and a high beta: the naive exponentials stay finite in float64, the
    log-space implementation agrees, also in float32."""
    z1, z2 = _simclr_inputs(seed=3)
    pairs = naive_pairs_simclr(z1, z2)
    ref = naive_hcl(pairs, 0.05, 0.1, 6.0)
    assert hard_negative_contrastive(*simclr_similarities(z1.double(), z2.double()), 0.05, 0.1,
                                     6.0).item() == pytest.approx(ref, rel=1e-9)
    assert hard_negative_contrastive(*simclr_similarities(z1, z2), 0.05, 0.1, 6.0).item() == \
        pytest.approx(ref, rel=1e-4)


def test_infonce_family_reduces_to_the_methods_own_losses():
    """DCL with tau+ = 0 is the biased loss (Chuang et al.: "for tau+ = 0 ... the standard
    contrastive loss"), i.e. NT-Xent and MoCo's InfoNCE; HCL with beta = 0 is DCL."""
    z1, z2 = _simclr_inputs()
    pos, neg = simclr_similarities(z1, z2)
    assert torch.allclose(debiased_contrastive(pos, neg, TAU, 0.0), nt_xent(z1, z2, TAU), atol=1e-6)
    assert torch.allclose(info_nce_from_similarities(pos, neg, TAU), nt_xent(z1, z2, TAU), atol=1e-6)
    q, k, queue = _moco_inputs()
    pos_m, neg_m = moco_similarities(q, k, queue)
    assert torch.allclose(debiased_contrastive(pos_m, neg_m, 0.2, 0.0), info_nce(q, k, queue, 0.2),
                          atol=1e-6)
    for tau_plus in (0.0, 0.05, 0.3):
        assert torch.equal(hard_negative_contrastive(pos, neg, TAU, tau_plus, 0.0),
                           debiased_contrastive(pos, neg, TAU, tau_plus))


def test_dcl_clamp_binds_when_the_correction_overshoots():
    """A large tau+ makes the corrected sum negative; Ng is then N exp(-1 / t)."""
    pos, neg = torch.tensor([0.9], dtype=torch.float64), torch.full((1, 4), -0.5, dtype=torch.float64)
    got = debiased_contrastive(pos, neg, TAU, 0.9).item()
    ng = 4 * math.exp(-1 / TAU)
    assert got == pytest.approx(-math.log(math.exp(0.9 / TAU) / (math.exp(0.9 / TAU) + ng)), rel=1e-12)


def test_flatnce_value_is_zero_and_its_gradient_is_infonces_rescaled():
    """Chen et al. 2021: FlatNCE's value is constant and its gradient is InfoNCE's, per anchor
    divided by 1 - p_pos (so it does not vanish as the positive's probability goes to 1)."""
    g = torch.Generator().manual_seed(5)
    pos = (torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    neg = (torch.rand(6, 7, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    flat = flat_nce(pos, neg, TAU)
    assert flat.item() == 0.0
    g_pos, g_neg = torch.autograd.grad(flat, (pos, neg))
    # the InfoNCE terms, each weighted by 1 / (1 - p_pos) (a constant), computed by hand
    weighted = 0.0
    for i in range(6):
        logits = torch.cat([pos[i:i + 1], neg[i]]) / TAU
        p_pos = float(torch.softmax(logits.detach(), dim=0)[0])
        weighted = weighted + -torch.log_softmax(logits, dim=0)[0] / (1 - p_pos)
    w_pos, w_neg = torch.autograd.grad(weighted / 6, (pos, neg))
    assert torch.allclose(g_pos, w_pos, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g_neg, w_neg, rtol=1e-10, atol=1e-12)
    # per anchor the direction is InfoNCE's: parallel gradients
    info = info_nce_from_similarities(pos, neg, TAU)
    i_pos, i_neg = torch.autograd.grad(info, (pos, neg))
    ratio = g_neg / i_neg
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio)) and (ratio > 1).all()


def test_uniformity_is_minimised_by_a_regular_simplex():
    """2N unit vectors at the vertices of a regular simplex (pairwise cos -1 / (2N - 1)) give the
    smallest uniformity of 2N points, log mean exp(-t ||u_i - u_j||^2) = -2t (1 + 1 / (2N - 1)),
    below random points and far below a collapsed embedding (0)."""
    n, t = 4, 2.0
    vertices = torch.eye(2 * n, dtype=torch.float64) - 1 / (2 * n)  # centred: a regular simplex
    perm = [0, 1, 2, 3, 4, 5, 6, 7]  # z1 = vertices 0-3, z2 = vertices 4-7 (positives differ)
    z1, z2 = vertices[perm[:n]], vertices[perm[n:]]
    # uniformity alone (weight 1, alignment removed by subtracting alpha-power of the positives)
    def uniform(a, b):
        pos, neg = simclr_similarities(a, b)
        return (align_uniform(pos, neg, 2.0, t, 1.0) - (2 - 2 * pos).mean()).item()

    # every pair of the simplex is equidistant, so the pairs of different images are too
    assert uniform(z1, z2) == pytest.approx(-2 * t * (1 + 1 / (2 * n - 1)), rel=1e-12)
    g = torch.Generator().manual_seed(6)
    rand = torch.randn(2 * n, 2 * n, generator=g, dtype=torch.float64)
    assert uniform(z1, z2) < uniform(rand[:n], rand[n:])
    same = torch.ones(n, 3, dtype=torch.float64)
    assert uniform(same, same) == pytest.approx(0.0, abs=1e-12)
    # alignment: identical views cost nothing, opposite views 2^alpha
    pos, neg = simclr_similarities(z1, z1)
    assert (align_uniform(pos, neg, 2.0, t, 0.0)).item() == pytest.approx(0.0, abs=1e-12)
    pos, neg = simclr_similarities(z1, -z1)
    assert (align_uniform(pos, neg, 2.0, t, 0.0)).item() == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("loss", [v for v in LOSS_VARIANTS if v not in WHOLE_BATCH_LOSSES])
def test_global_negatives_average_to_the_joint_batch_loss(loss):
    """Two "ranks" each contrasting their half against the gathered batch average to the
    one-process loss (values and gradients): what SimCLR's gather_distributed relies on."""
    cfg = LossVariantConfig(loss=loss, tau_plus=0.1, beta=1.0)
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    joint = contrastive_loss(*simclr_similarities(z1, z2), TAU, cfg)
    halves = [contrastive_loss(*simclr_similarities(z1[r * 3:(r + 1) * 3], z2[r * 3:(r + 1) * 3],
                                                    all_z1=z1, all_z2=z2, offset=3 * r), TAU, cfg)
              for r in range(2)]
    mean = (halves[0] + halves[1]) / 2
    assert torch.allclose(mean, joint, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(mean, (z1, z2)), torch.autograd.grad(joint, (z1, z2))):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_memory_negatives_are_appended_without_gradient():
    z1, z2 = (z.requires_grad_() for z in _simclr_inputs())
    memory = torch.randn(7, 6, requires_grad=True)
    pos, neg = simclr_similarities(z1, z2, extra_negatives=memory)
    assert neg.shape == (10, 8 + 7)
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    m = torch.nn.functional.normalize(memory.detach(), dim=1)
    assert torch.allclose(neg[:, 8:], u @ m.T)
    neg.sum().backward()
    assert memory.grad is None


def test_config_validates_the_loss_and_its_keys():
    with pytest.raises(ValueError, match="valid losses: infonce, nce, dcl, hcl, flatnce, align_uniform"):
        LossVariantConfig(loss="triplet")
    for bad in ({"tau_plus": 1.0}, {"tau_plus": -0.1}, {"beta": -1.0}, {"align_alpha": 0.0},
                {"unif_t": 0.0}, {"unif_weight": -1.0}):
        with pytest.raises(ValueError):
            LossVariantConfig(**bad)
    for method in ("simclr", "mocov2", "simclrv2"):
        with pytest.raises(ValueError, match="valid losses"):
            get_method(method).config(loss="ntxent")
        assert get_method(method).config(loss="hcl", beta=0.5).beta == 0.5


def _method(name, loss):
    args = {"simclr": dict(proj_hidden_dim=32, proj_dim=16),
            "mocov2": dict(queue_size=24, proj_hidden_dim=32, proj_dim=16, symmetric=True)}[name]
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    return get_method(name).build(backbone, dim, {**args, "loss": loss})


@pytest.mark.parametrize("loss", LOSS_VARIANTS)
@pytest.mark.parametrize("name", ["simclr", "mocov2"])
def test_each_variant_trains_two_steps(name, loss):
    method = _method(name, loss)
    opt = torch.optim.SGD([p for grp in method.param_groups() for p in grp["params"]], lr=0.05)
    g = torch.Generator().manual_seed(8)
    for step in range(2):
        views = [torch.randn(8, 1, 16, 16, generator=g) for _ in range(2)]
        ctx = StepContext(step=step, total_steps=2)
        out = method(views, ctx)
        assert torch.isfinite(out.loss), (name, loss, step)
        opt.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]
        assert grads and any(gr.abs().sum() > 0 for gr in grads)
        opt.step()
        method.on_step_end(out, ctx)
        if loss != "infonce":  # InfoNCE's value is logged beside the variant's
            assert torch.isfinite(torch.as_tensor(out.logs["infonce"]))
