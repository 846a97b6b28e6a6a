"""Temperature-scaled logits stay in float32 under bf16 autocast.

Every loss of the InfoNCE family and every other loss that divides similarities by a temperature
is run on float32 embeddings under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the engine's
bf16 mode) and compared, value and gradient w.r.t. the embeddings, with the same computation in
float64 on the same (float32-rounded) values. The last test turns the fix off (``no_autocast``
becomes a no-op, so autocast casts the matmuls back to bf16, as a bare ``.float()`` would) and
checks that every case then misses the tolerance: the comparison can fail.
"""

import contextlib
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from sslbench.methods.cmc import cmc_in_batch_loss, cmc_memory_loss
from sslbench.methods.cpc import cpc_infonce
from sslbench.methods.deepclusterv2 import deepclusterv2_loss, prototype_scores
from sslbench.methods.dino import dino_loss
from sslbench.methods.heads import DINOHead
from sslbench.methods.instdisc import bank_scores, instdisc_nce_loss
from sslbench.methods.invaspread import invaspread_loss
from sslbench.methods.jigsawcluster import jigsaw_cluster_loss
from sslbench.methods.losses import (
    LOSS_VARIANTS,
    LossVariantConfig,
    contrastive_loss,
    fp32_einsum,
    fp32_matmul,
    info_nce,
    moco_similarities,
    nt_xent,
    simclr_similarities,
)
from sslbench.methods.mocov3 import mocov3_loss
from sslbench.methods.nnclr import nnclr_loss
from sslbench.methods.pixpro import pixcontrast_loss
from sslbench.methods.swav import prototype_scores as swav_scores
from sslbench.methods.swav import sinkhorn, swapped_prediction_loss

LOSS_RTOL = 1e-4  # |loss - ref| / max(|ref|, 1)
GRAD_RTOL = 1e-3  # ||grad - ref|| / ||ref||, the worst embedding


class Inputs:
    """A case's tensors: float32 draws, rounded to the embeddings' dtype, then computed in
    ``compute`` (the embeddings' dtype, or float64 for the reference on the same values).
    Parameters and buffers (banks, queues, prototypes, heads) are float32 (float64 for the
    reference), as under autocast."""

    def __init__(self, dtype: torch.dtype, reference: bool) -> None:
        self.g = torch.Generator().manual_seed(0)
        self.dtype, self.compute = dtype, torch.float64 if reference else dtype
        self.param_dtype = torch.float64 if reference else torch.float32
        self.common = torch.randn(128, generator=self.g)

    def draw(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def embed(self, x: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """An embedding (a network output): ``x`` rounded to the dtype under test."""
        return x.to(self.dtype).to(self.compute).requires_grad_(grad)

    def randn(self, *shape: int, grad: bool = True) -> torch.Tensor:
        return self.embed(self.draw(*shape), grad)

    def unit(self, n: int, d: int = 128, grad: bool = True) -> torch.Tensor:
        return self.embed(F.normalize(self.cone(n, d), dim=-1), grad)

    def param(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        return x.to(self.param_dtype).requires_grad_(grad)

    def cone(self, n: int, d: int = 128) -> torch.Tensor:
        """n float32 draws around a common direction: learnt embeddings fill a cone, not the
        sphere, and their negatives have cosines well above 0."""
        return self.draw(n, d) + 2.0 * self.common[:d]

    def views(self, n: int = 32, d: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of n images: positives closer than negatives."""
        base = self.cone(n, d)
        return self.embed(base + self.draw(n, d)), self.embed(base + self.draw(n, d))

    def bank(self, n: int, d: int = 128) -> torch.Tensor:
        """A memory of n unit rows (a queue, a memory bank, prototypes), float32."""
        return self.param(F.normalize(self.cone(n, d), dim=1))


Result = tuple[torch.Tensor, list[torch.Tensor]]  # the loss and the embeddings whose gradients are compared
Case = Callable[[Inputs], Result]


def nt_xent_case(x: Inputs) -> Result:
    z1, z2 = x.views()
    return nt_xent(z1, z2, 0.1), [z1, z2]


def info_nce_case(x: Inputs) -> Result:
    q, k = x.views()
    return info_nce(q, k, x.bank(1024), 0.07), [q]


def simclr_variant(loss: str) -> Case:
    def case(x: Inputs) -> Result:
        z1, z2 = x.views()
        pos, neg = simclr_similarities(z1, z2)
        return contrastive_loss(pos, neg, 0.1, LossVariantConfig(loss=loss)), [z1, z2]
    return case


def moco_variant(loss: str) -> Case:
    def case(x: Inputs) -> Result:
        q, k = x.views()
        pos, neg = moco_similarities(q, k, x.bank(1024))
        return contrastive_loss(pos, neg, 0.2, LossVariantConfig(loss=loss)), [q]
    return case


def simclrv2_memory_case(x: Inputs) -> Result:
    z1, z2 = x.views()
    pos, neg = simclr_similarities(z1, z2, extra_negatives=x.bank(128))
    return contrastive_loss(pos, neg, 0.1, LossVariantConfig()), [z1, z2]


def mocov3_case(x: Inputs) -> Result:
    q, k = x.views()
    return mocov3_loss(q, k, 0.2), [q]


def nnclr_case(x: Inputs) -> Result:
    z, p = x.views()
    return nnclr_loss(x.param(z.detach()), p, 0.1), [p]


def instdisc_nce_case(x: Inputs) -> Result:
    v, bank = x.unit(32, 128), x.bank(512)
    cols = torch.randint(0, 512, (32, 257), generator=x.g)
    logits = bank_scores(v, bank, cols) / 0.07
    return instdisc_nce_loss(logits, torch.tensor(6.0, dtype=logits.dtype), 512), [v]


def instdisc_softmax_case(x: Inputs) -> Result:
    v, bank = x.unit(32, 128), x.bank(512)
    return F.cross_entropy(bank_scores(v, bank) / 0.07, torch.arange(32)), [v]


def invaspread_case(x: Inputs) -> Result:
    f1, f2 = x.views()
    return invaspread_loss(f1, f2, 0.1, detach_candidates=False), [f1, f2]


def cmc_batch_case(x: Inputs) -> Result:
    z1, z2 = x.views()
    return cmc_in_batch_loss([z1, z2], 0.07, "core"), [z1, z2]


def cmc_memory_case(loss: str) -> Case:
    def case(x: Inputs) -> Result:
        z = [x.unit(16, 128), x.unit(16, 128)]
        memory = torch.stack([x.bank(512), x.bank(512)])
        cols = torch.randint(0, 512, (16, 129), generator=x.g)
        log_z = x.param(torch.full((2, 2), 6.0))
        return cmc_memory_loss(z, memory, cols, 0.07, "core", loss, log_z=log_z, num_samples=512), z
    return case


def pixcontrast_case(x: Inputs) -> Result:
    q, k = x.randn(4, 49, 128), x.randn(4, 49, 128, grad=False)
    mask = torch.rand(4, 49, 49, generator=x.g) < 0.1
    return pixcontrast_loss(q, k, mask, 0.3), [q]


def cpc_case(x: Inputs) -> Result:
    preds, targets = x.randn(4, 64, 5, 5), x.randn(4, 64, 5, 5)
    return cpc_infonce(preds, targets, 2, 0.5), [preds, targets]


def jigsawcluster_case(x: Inputs) -> Result:
    z = x.unit(32, 128)
    return jigsaw_cluster_loss(z, torch.arange(8).repeat_interleave(4), 0.2), [z]


def deepclusterv2_case(x: Inputs) -> Result:
    z = [x.unit(32, 128), x.unit(32, 128)]
    prototypes = [x.bank(100), x.bank(60)]
    targets = torch.stack([torch.arange(32) % 100, torch.arange(32) % 60])
    return deepclusterv2_loss(prototype_scores(z, prototypes), targets, 0.1), z


def swav_case(x: Inputs) -> Result:
    z = [x.unit(32, 128), x.unit(32, 128)]
    prototypes = x.bank(200).requires_grad_()
    scores = [swav_scores(v, prototypes) for v in z]
    codes = [sinkhorn(s.detach()) for s in scores]
    return swapped_prediction_loss(scores, codes, [(0, 1), (1, 0)], 0.1), [*z, prototypes]


def dino_case(x: Inputs) -> Result:
    torch.manual_seed(0)
    head = DINOHead(8, 16, 64, 1024).to(x.param_dtype)
    h_student, h_teacher = x.unit(2 * 16, 64), x.unit(2 * 16, 64, grad=False)
    center = x.param(0.1 * x.draw(1, 1024))
    student, teacher = head.logits(h_student).chunk(2), head.logits(h_teacher).chunk(2)
    return dino_loss(list(student), list(teacher), center, 0.1, 0.04), [h_student]


CASES: dict[str, Case] = {
    "nt_xent": nt_xent_case,
    "moco_info_nce": info_nce_case,
    **{f"simclr_{v}": simclr_variant(v) for v in LOSS_VARIANTS},
    **{f"moco_{v}": moco_variant(v) for v in LOSS_VARIANTS},
    "simclrv2_memory": simclrv2_memory_case,
    "mocov3": mocov3_case,
    "nnclr": nnclr_case,
    "instdisc_nce": instdisc_nce_case,
    "instdisc_softmax_bank": instdisc_softmax_case,
    "invaspread": invaspread_case,
    "cmc_batch": cmc_batch_case,
    "cmc_memory_softmax": cmc_memory_case("softmax"),
    "cmc_memory_nce": cmc_memory_case("nce"),
    "pixcontrast": pixcontrast_case,
    "cpc": cpc_case,
    "jigsawcluster": jigsawcluster_case,
    "deepclusterv2": deepclusterv2_case,
    "swav": swav_case,
    "dino": dino_case,
}


def _run(case: Case, dtype: torch.dtype, reference: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference runs in float64 without autocast; the case under test under bf16 autocast."""
    ctx = contextlib.nullcontext() if reference else torch.autocast("cpu", dtype=torch.bfloat16)
    with ctx:
        loss, inputs = case(Inputs(dtype, reference))
    return loss.detach(), list(torch.autograd.grad(loss, inputs))


def errors(case: Case, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(relative loss error, worst relative gradient error) of ``case`` on embeddings of
    ``dtype`` under bf16 autocast, against float64 on the same values."""
    loss, grads = _run(case, dtype, reference=False)
    ref_loss, ref_grads = _run(case, dtype, reference=True)
    assert all(r.dtype == torch.float64 for r in ref_grads)
    loss_err = float((loss.double() - ref_loss).abs() / ref_loss.abs().clamp_min(1.0))
    grad_err = max(float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, ref_grads))
    return loss_err, grad_err


@pytest.mark.parametrize("name", list(CASES))
def test_float32_embeddings_under_bf16_autocast_match_float64(name):
    loss_err, grad_err = errors(CASES[name])
    assert loss_err < LOSS_RTOL, f"{name}: loss off by {loss_err:.2e}"
    assert grad_err < GRAD_RTOL, f"{name}: gradient off by {grad_err:.2e}"


@pytest.mark.parametrize("name", ["nt_xent", "moco_info_nce", "simclr_dcl", "swav", "dino", "cmc_memory_nce"])
def test_gradients_flow_to_bf16_embeddings(name):
    """bf16 embeddings (a model run in bf16): the loss is the float64 loss of their values; the
    gradient arrives in bf16, off only by its own rounding (2^-9)."""
    _, grads = _run(CASES[name], torch.bfloat16, reference=False)
    assert grads[0].dtype == torch.bfloat16
    loss_err, grad_err = errors(CASES[name], torch.bfloat16)
    assert loss_err < LOSS_RTOL and grad_err < 4e-3, (loss_err, grad_err)


def test_helpers_are_the_plain_product_in_float32():
    """Bit for bit the plain ops on float32 outside autocast (the CPU numbers do not move)."""
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(7, 5, generator=g), torch.randn(5, 9, generator=g), torch.randn(7, 3, 5, generator=g)
    assert torch.equal(fp32_matmul(a, b), a @ b)
    assert torch.equal(fp32_einsum("bd,bkd->bk", a, c), torch.einsum("bd,bkd->bk", a, c))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16 and fp32_matmul(a, b).dtype == torch.float32
        assert fp32_matmul(a.bfloat16(), b).dtype == torch.float32
        assert fp32_matmul(a.double(), b).dtype == torch.float64


@pytest.fixture
def autocast_left_on(monkeypatch):
    """The fix undone: ``no_autocast`` does nothing, so autocast casts the (float32) inputs of
    every matmul back to bf16, as a bare ``.float()`` would leave them."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("sslbench.methods") and hasattr(module, "no_autocast"):
            monkeypatch.setattr(module, "no_autocast", lambda x: contextlib.nullcontext())


@pytest.mark.parametrize("name", list(CASES))
def test_without_the_fix_every_case_misses_the_tolerance(name, autocast_left_on):
    loss_err, grad_err = errors(CASES[name])
    assert loss_err > LOSS_RTOL or grad_err > GRAD_RTOL, (loss_err, grad_err)
