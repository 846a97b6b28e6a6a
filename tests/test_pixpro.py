"""PixPro / PixContrast: the cells' positions in the original image and the positive pairs against
the official ``regression_loss`` geometry written as Python loops, hand-derived positives
(identical, shifted, flipped and disjoint crops), the pixel propagation module and both losses
against naive float64 loops written from the paper, and the method's wiring (symmetry in the two
views, the instance branch, the EMA target)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.benchmark.augment import ViewSpec, crop_resize, sample_view_params
from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.engine import view_geometry
from sslbench.benchmark.schedules import cosine_momentum
from sslbench.methods import StepContext, get_method
from sslbench.methods.base import ViewGeometry
from sslbench.methods.pixpro import (
    PixProConfig,
    bin_diagonal,
    cell_centres,
    pixcontrast_loss,
    pixel_distances,
    pixel_propagation,
    pixpro_loss,
    positive_mask,
    view_positives,
)

# ------------------------------------------------------------------------------------------------
# Naive references (Python loops in float64)


def naive_official_mask(box1, flip1, box2, flip2, size1, size2, threshold):
    """The official ``regression_loss`` for one image: coords ``(x_ul, y_ul, x_lr, y_lr)``, a flip
    swaps the x ends (``RandomHorizontalFlipCoord``), centres ``start + (k + 0.5) * bin``, distances
    divided by the larger bin diagonal. Returns (distances, mask) as nested lists."""

    def coords(box, flip):
        top, left, h, w = box
        x0, y0, x1, y1 = left, top, left + w, top + h
        return (x1, y0, x0, y1) if flip else (x0, y0, x1, y1)

    def centres(c, hh, ww):
        bw, bh = (c[2] - c[0]) / ww, (c[3] - c[1]) / hh
        return [((r + 0.5) * bh + c[1], (k + 0.5) * bw + c[0]) for r in range(hh) for k in range(ww)], \
            math.hypot(bw, bh)

    p1, d1 = centres(coords(box1, flip1), *size1)
    p2, d2 = centres(coords(box2, flip2), *size2)
    dist = [[math.hypot(a[0] - b[0], a[1] - b[1]) / max(d1, d2) for b in p2] for a in p1]
    return dist, [[d < threshold for d in row] for row in dist]


def naive_propagation(x, v, gamma):
    """y_i = sum_j max(cos(x_i, x_j), 0)^gamma v_j (+1e-6 inside the power when gamma < 1)."""
    out = []
    for xi in x:
        acc = [0.0] * len(v[0])
        for xj, vj in zip(x, v):
            c = sum(a * b for a, b in zip(xi, xj)) / math.sqrt(sum(a * a for a in xi) * sum(b * b for b in xj))
            s = (max(c, 0.0) + (1e-6 if gamma < 1 else 0.0)) ** gamma
            acc = [a + s * b for a, b in zip(acc, vj)]
        out.append(acc)
    return out


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def naive_pixpro(y, t, mask):
    """-1/B sum_b mean over positive pairs (i, j) of cos(y_i, t_j); 0 for an image without one."""
    total = 0.0
    for yb, tb, mb in zip(y, t, mask):
        pairs = [_cos(yb[i], tb[j]) for i in range(len(yb)) for j in range(len(tb)) if mb[i][j]]
        total += -sum(pairs) / len(pairs) if pairs else 0.0
    return total / len(y)


def naive_pixcontrast(q, k, mask, tau):
    """Eq. 1 per pixel with a positive, averaged over those pixels, then over the images."""
    total = 0.0
    for qb, kb, mb in zip(q, k, mask):
        losses = []
        for i in range(len(qb)):
            if not any(mb[i]):
                continue
            e = [math.exp(_cos(qb[i], kb[j]) / tau) for j in range(len(kb))]
            pos = sum(x for x, m in zip(e, mb[i]) if m)
            neg = sum(x for x, m in zip(e, mb[i]) if not m)
            losses.append(-math.log(pos / (pos + neg)))
        total += sum(losses) / len(losses) if losses else 0.0
    return total / len(q)


def _random_boxes(b, g):
    hw = 0.3 + 0.7 * torch.rand(b, 2, generator=g, dtype=torch.float64)
    tl = torch.rand(b, 2, generator=g, dtype=torch.float64) * (1 - hw)
    return torch.cat((tl, hw), dim=1)


# ------------------------------------------------------------------------------------------------
# Geometry


def test_identity_crops_match_cell_to_cell():
    """Same square box, no flip: distance 0 on the diagonal, and a neighbouring cell is 1/sqrt(2)
    bin diagonals away (> T = 0.7), so every cell's only positive is itself."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.5]], dtype=torch.float64)
    flip = torch.zeros(2, dtype=torch.bool)
    c = cell_centres(boxes, flip, 4, 4)
    assert c.shape == (2, 16, 2)
    torch.testing.assert_close(c[0, 5], torch.tensor([0.375, 0.375], dtype=torch.float64))  # cell (1, 1)
    d = pixel_distances(c, c, bin_diagonal(boxes, 4, 4))
    torch.testing.assert_close(torch.diagonal(d, dim1=1, dim2=2), torch.zeros(2, 16, dtype=torch.float64))
    assert d[0, 0, 1].item() == pytest.approx(1 / math.sqrt(2))
    assert torch.equal(positive_mask(c, c, 0.7, bin_diagonal(boxes, 4, 4)), torch.eye(16, dtype=torch.bool).expand(2, 16, 16))


def test_flip_mirrors_the_columns():
    g = torch.Generator().manual_seed(0)
    boxes = _random_boxes(3, g)
    plain = cell_centres(boxes, torch.zeros(3, dtype=torch.bool), 3, 5).view(3, 3, 5, 2)
    flipped = cell_centres(boxes, torch.ones(3, dtype=torch.bool), 3, 5).view(3, 3, 5, 2)
    torch.testing.assert_close(flipped, plain.flip(2))
    # A view and its mirror image (square 0.2 x 0.2 bins): cell (r, c) is positive with
    # (r, w - 1 - c) only; the next cells are 1 / sqrt(2) bin diagonals away.
    box = torch.tensor([[0.1, 0.0, 0.6, 1.0]])
    mask = view_positives(ViewGeometry(box, torch.tensor([False])), ViewGeometry(box, torch.tensor([True])),
                          (3, 5), (3, 5), 0.7)
    expected = torch.eye(5, dtype=torch.bool).flip(1)
    assert torch.equal(mask[0], torch.block_diag(*[expected.int()] * 3).bool())


def test_known_boxes_give_known_positives():
    """A crop shifted by half a bin to the right: cell (r, c) of view 1 is 1/sqrt(2) * 0.5 = 0.35
    bin diagonals from cells (r, c) and (r, c - 1) of view 2 and > 0.7 from all others; disjoint
    crops have no positive; a crop of the top-left quarter at the same map size halves the bins
    (the larger diagonal normalises)."""
    g1 = ViewGeometry(torch.tensor([[0.0, 0.0, 0.8, 0.8]]), torch.tensor([False]))
    g2 = ViewGeometry(torch.tensor([[0.0, 0.1, 0.8, 0.8]]), torch.tensor([False]))
    mask = view_positives(g1, g2, (4, 4), (4, 4), 0.7)[0].view(4, 4, 4, 4)
    for r, c, r2, c2 in torch.cartesian_prod(*[torch.arange(4)] * 4).tolist():
        assert bool(mask[r, c, r2, c2]) == (r2 == r and c2 in (c, c - 1)), (r, c, r2, c2)
    far = ViewGeometry(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), torch.tensor([False]))
    near = ViewGeometry(torch.tensor([[0.0, 0.0, 0.4, 0.4]]), torch.tensor([True]))
    assert not view_positives(near, far, (2, 2), (2, 2), 0.7).any()
    full = ViewGeometry(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([False]))
    quarter = ViewGeometry(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([False]))
    m = view_positives(full, quarter, (2, 2), (2, 2), 0.7)[0]
    # Bin diagonals 0.5 sqrt(2) (full, the larger) and 0.25 sqrt(2). full's cells at 0.25 / 0.75,
    # quarter's at 0.125 / 0.375: full (0, 0) is 0.25 from all four; full (0, 1) = (0.25, 0.75) is
    # sqrt(0.125^2 + 0.375^2) / 0.707 = 0.56 from quarter's column 1, 0.90 from column 0; full
    # (1, 1) is at least 0.375 sqrt(2) / 0.707 = 0.75 from all.
    assert m.tolist() == [[True] * 4, [False, True, False, True], [False, False, True, True], [False] * 4]


def test_cell_centres_follow_the_augmentation_crop_and_flip():
    """On an image whose two channels hold each pixel's (y, x) position, the augmentation's crop +
    resize + flip gives views whose 7 x 7 px bins average to the bin's position in the original
    image: the cells' centres (up to the crop's clamping to its edge pixels; measured 1.3e-3)."""
    g = torch.Generator().manual_seed(6)
    ramp = (torch.arange(28, dtype=torch.float32) + 0.5) / 28
    images = torch.stack((ramp[:, None].expand(28, 28), ramp[None, :].expand(28, 28)))[None].expand(8, 2, 28, 28)
    params = sample_view_params(ViewSpec(crop_scale=(0.2, 1.0), flip_p=0.5), 8, 28, 28, g)
    assert params.flip.any() and not params.flip.all()
    views = crop_resize(images, params.boxes, 28, params.flip)
    geometry = view_geometry([params], 28, 28)[0]
    binned = F.avg_pool2d(views, 7).flatten(2).transpose(1, 2)  # (B, 16, 2): (y, x) per cell
    torch.testing.assert_close(binned, cell_centres(geometry.boxes, geometry.flip, 4, 4), rtol=0, atol=5e-3)


@pytest.mark.parametrize("size1, size2", [((4, 4), (4, 4)), ((3, 3), (4, 4)), ((2, 3), (3, 2))])
def test_mask_and_distances_match_the_official_geometry(size1, size2):
    g = torch.Generator().manual_seed(1)
    b1, b2 = _random_boxes(6, g), _random_boxes(6, g)
    f1, f2 = torch.rand(6, generator=g) < 0.5, torch.rand(6, generator=g) < 0.5
    c1, c2 = cell_centres(b1, f1, *size1), cell_centres(b2, f2, *size2)
    scale = torch.maximum(bin_diagonal(b1, *size1), bin_diagonal(b2, *size2))
    dist = pixel_distances(c1, c2, scale)
    mask = view_positives(ViewGeometry(b1, f1), ViewGeometry(b2, f2), size1, size2, 0.7)
    for i in range(6):
        d, m = naive_official_mask(b1[i].tolist(), bool(f1[i]), b2[i].tolist(), bool(f2[i]), size1, size2, 0.7)
        torch.testing.assert_close(dist[i], torch.tensor(d, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        assert torch.equal(mask[i], torch.tensor(m))


# ------------------------------------------------------------------------------------------------
# Pixel propagation and the losses


@pytest.mark.parametrize("gamma", [2.0, 1.0, 0.5])
def test_pixel_propagation_matches_the_naive_loop(gamma):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    y = pixel_propagation(x, v, gamma)
    for b in range(2):
        torch.testing.assert_close(y[b], torch.tensor(naive_propagation(x[b].tolist(), v[b].tolist(), gamma),
                                                      dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_pixel_propagation_ignores_dissimilar_pixels():
    """Orthogonal or opposite pixels get weight max(cos, 0)^gamma = 0: each pixel keeps its own value."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]], dtype=torch.float64)
    v = torch.randn(1, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(pixel_propagation(x, v, 2.0), v)


def _loss_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, 5, generator=g) < 0.3
    mask[1] = False  # an image without any positive pair
    mask[0, 2] = False  # a pixel without a positive
    mask[2, 0, 0] = True
    return y, t, mask


def test_pixpro_loss_matches_the_naive_loop():
    y, t, mask = _loss_inputs(3)
    assert pixpro_loss(y, t, mask).item() == pytest.approx(naive_pixpro(y.tolist(), t.tolist(), mask.tolist()),
                                                           rel=1e-10)
    assert pixpro_loss(y, y, torch.eye(6, dtype=torch.bool).expand(3, 6, 6)).item() == pytest.approx(-1.0)


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_pixcontrast_loss_matches_the_naive_loop(tau):
    q, k, mask = _loss_inputs(4)
    expected = naive_pixcontrast(q.tolist(), k.tolist(), mask.tolist(), tau)
    assert pixcontrast_loss(q, k, mask, tau).item() == pytest.approx(expected, rel=1e-10)


def test_pixcontrast_loss_closed_forms_and_finite_gradients():
    """Every pixel positive: -log 1 = 0. Equal similarities: -log(|P| / N) per pixel. A row without
    a positive adds nothing and passes no NaN into the gradient."""
    q, k, mask = _loss_inputs(5)
    assert pixcontrast_loss(q, k, torch.ones_like(mask), 0.3).item() == pytest.approx(0.0, abs=1e-12)
    ones = torch.ones(1, 4, 3, dtype=torch.float64)
    m = torch.zeros(1, 4, 6, dtype=torch.bool)
    m[0, :, :2] = True
    assert pixcontrast_loss(ones, torch.ones(1, 6, 3, dtype=torch.float64), m, 0.3).item() == pytest.approx(math.log(3))
    low = pixcontrast_loss(q.bfloat16(), k.bfloat16(), mask, 0.3)  # bf16 autocast: sums in float32
    assert low.dtype == torch.float32 and pixpro_loss(q.bfloat16(), k.bfloat16(), mask).dtype == torch.float32
    q.requires_grad_(True)
    pixcontrast_loss(q, k, mask, 0.3).backward()
    assert torch.isfinite(q.grad).all() and q.grad[1].abs().sum() == 0 and q.grad[0, 2].abs().sum() == 0


# ------------------------------------------------------------------------------------------------
# The method


def _method(**args):
    torch.manual_seed(0)
    encoder = build_backbone("small-cnn", 1, 28)[0]
    cfg = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, **args}
    return get_method("pixpro").build(encoder, 256, cfg)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(6, 1, 28, 28, generator=g), torch.randn(6, 1, 20, 20, generator=g)]
    geometry = tuple(ViewGeometry(_random_boxes(6, g).float(), torch.rand(6, generator=g) < 0.5) for _ in range(2))
    return views, geometry


@pytest.mark.parametrize("args", [{}, {"loss": "pixcontrast"}, {"instance_weight": 1.0, "transform_layers": 2}])
def test_loss_is_symmetric_in_the_two_views(args):
    """Swapping the views (and their geometry) gives the same loss: each direction pairs a view's
    prediction with the other view's target under the matching (transposed) mask."""
    method = _method(**args)
    views, geometry = _batch()
    views = [views[0], views[0].flip(0)]  # equal sizes: both views share the BN batch either way
    out = method(views, StepContext(step=0, total_steps=4, geometry=geometry))
    swapped = method(views[::-1], StepContext(step=0, total_steps=4, geometry=geometry[::-1]))
    torch.testing.assert_close(swapped.loss, out.loss, rtol=1e-5, atol=1e-6)
    assert out.logs["positive_pairs"] > 0


def test_training_step_is_the_pixpro_formula_on_the_modules():
    method = _method()
    views, geometry = _batch(1)
    out = method(views, StepContext(step=0, total_steps=4, geometry=geometry))
    enc, proj, tproj = method.encoder[:-2], method.projector, method.target_projector
    z = [proj(enc(v)) for v in views]  # different sizes: BN batches are per view anyway
    t = [tproj(method.target_encoder[:-2](v)) for v in views]
    (h1, w1), (h2, w2) = z[0].shape[2:], z[1].shape[2:]
    assert (h1, w1, h2, w2) == (4, 4, 3, 3)
    m12 = view_positives(geometry[0], geometry[1], (h1, w1), (h2, w2), 0.7)

    def ppm(x):
        v = F.normalize(method.value_transform(x), dim=1)
        return pixel_propagation(x.flatten(2).transpose(1, 2), v.flatten(2).transpose(1, 2), 2.0)

    def px(x):
        return x.flatten(2).transpose(1, 2)

    expected = pixpro_loss(ppm(z[0]), px(t[1]), m12) + pixpro_loss(ppm(z[1]), px(t[0]), m12.transpose(1, 2))
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_needs_geometry_and_ema_follows_cosine_momentum():
    method = _method(instance_weight=0.5)
    assert method.needs_geometry
    views, _ = _batch()
    with pytest.raises(ValueError, match="geometry"):
        method(views, StepContext())
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    target0 = [p.clone() for p in method.target_encoder.parameters()]
    logs = method.on_step_end(None, StepContext(step=3, total_steps=10))
    m = cosine_momentum(3, 10, 0.99)
    assert logs["ema_momentum"] == pytest.approx(m)
    for t0, t, o in zip(target0, method.target_encoder.parameters(), method.encoder.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * o)
    assert not any(p.requires_grad for p in method.target_instance_projector.parameters())


def test_config_is_validated():
    with pytest.raises(ValueError, match="loss"):
        PixProConfig(loss="pixel")
    with pytest.raises(ValueError, match="transform_layers"):
        PixProConfig(transform_layers=3)
