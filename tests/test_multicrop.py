"""Multi-crop: the derived augmentation name ``<recipe>+<N>x<size>`` and the view pairing helpers."""

import dataclasses

import pytest
import torch

from sslbench.benchmark import augment as A
from sslbench.benchmark.augment import BatchAugment
from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.methods.multicrop import count_global, crop_pairs


def _local(base: str, size: int) -> A.ViewSpec:
    """What a local view of ``size`` px derived from ``base`` must be, written out."""
    return dataclasses.replace(A.get_augment_recipe(base).views[0], size=size, crop_scale=(0.05, 0.14))


# ------------------------------------------------------------------------------------------------
# The derived name


def test_suffix_appends_local_views_and_keeps_the_global_ones():
    base = A.get_augment_recipe("fmnist-quick")
    recipe = A.get_augment_recipe("fmnist-quick+4x12")
    assert recipe.name == "fmnist-quick+4x12" and len(recipe.views) == 6
    assert recipe.views[:2] == base.views  # global views unchanged
    assert recipe.views[2:] == (_local("fmnist-quick", 12),) * 4
    assert [v.output_size(28) for v in recipe.views] == [20, 20, 12, 12, 12, 12]
    assert "Derived from 'fmnist-quick' + 4 multi-crop local view(s) of 12 px" in recipe.source
    assert base.source in recipe.source and "0.05-0.14" in recipe.source
    assert A.add_local_views("fmnist-quick", 4, 12) == recipe


def test_imagenet_style_names_keep_dataset_sized_global_views():
    recipe = A.get_augment_recipe("simclr+6x96")
    assert [v.output_size(224) for v in recipe.views] == [224, 224] + [96] * 6
    assert recipe.views[2].blur_p == 0.5 and recipe.views[2].brightness == 0.8  # colour as view 1
    byol = A.get_augment_recipe("byol+6x96")
    assert byol.views[:2] == A.get_augment_recipe("byol").views and byol.views[2:] == (_local("byol", 96),) * 6


def test_suffix_composes_with_ablations_and_itself():
    # '-only-a+b' uses '+' too: the multi-crop suffix is only a last segment that starts with a digit.
    assert len(A.get_augment_recipe("simclr-only-crop+color").views) == 2
    combined = A.get_augment_recipe("simclr-only-crop+color+6x96")
    ablated = A.get_augment_recipe("simclr-only-crop+color")
    assert combined.views[:2] == ablated.views
    assert combined.views[2:] == (_local("simclr-only-crop+color", 96),) * 6
    assert combined.views[2].blur_p == 0.0 and combined.views[2].flip_p == 0.0  # the ablation carries over
    no_color = A.get_augment_recipe("fmnist-quick-no-color+4x12")
    assert no_color.views[:2] == A.get_augment_recipe("fmnist-quick-no-color").views
    assert all(v.jitter_p == 0.0 for v in no_color.views)
    twice = A.get_augment_recipe("fmnist-quick+4x12+2x8")
    assert [v.size for v in twice.views] == [20, 20, 12, 12, 12, 12, 8, 8]
    assert twice.views[6] == _local("fmnist-quick", 8)


def test_derived_multicrop_names_are_not_listed_and_pass_config_overrides():
    from sslbench.benchmark.recipes import resolve

    before = A.list_augment_recipes()
    A.get_augment_recipe("fmnist-quick+4x12")
    assert A.list_augment_recipes() == before
    base = resolve("simclr-quick")
    cfg = resolve("simclr-quick", ["augment=fmnist-quick+4x12"])
    assert cfg.augment == "fmnist-quick+4x12" and cfg.hash() != base.hash()


@pytest.mark.parametrize("name, error, fragments", [
    ("fmnist-quick+0x12", ConfigError, ["number of local views must be an integer >= 1, got 0"]),
    ("fmnist-quick+4x3", ConfigError, ["local view size must be an integer >= 4, got 3"]),
    ("fmnist-quick+4x20", ConfigError, ["local views of 20 px to global views of 20 px", "count_global"]),
    ("fmnist-quick+4x24", ConfigError, ["local views must be smaller"]),
    ("fmnist-quick+04x12", ConfigError, ["'+04x12'", "without leading zeros"]),
    ("fmnist-quick+4x12px", ConfigError, ["'+4x12px'", "<recipe>+<N>x<size>"]),
    ("fmnist-quick+4x", ConfigError, ["'+4x'"]),
    ("+4x12", ConfigError, ["'+4x12'"]),
    ("fmnist-quick+4x12-no-color", ConfigError, ["ablation after a multi-crop suffix", "suffix last"]),
    ("fmnist-quick+4x12-only-crop+flip", ConfigError, ["ablation after a multi-crop suffix"]),
    ("fmnist-quick-no-crop+4x12", ConfigError, ["whose views do not crop"]),
    ("nope+4x12", UnknownNameError, ["Unknown augmentation recipe 'nope'", "+<N>x<size>"]),
    ("fmnist-quick-no-colour+4x12", ConfigError, ["'colour'"]),
])  # fmt: skip
def test_bad_multicrop_names_are_clear_errors(name, error, fragments):
    with pytest.raises(error) as info:
        A.get_augment_recipe(name)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_add_local_views_rejects_non_integers():
    with pytest.raises(ConfigError, match="number of local views"):
        A.add_local_views("fmnist-quick", True, 12)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="local view size"):
        A.add_local_views("fmnist-quick", 2, 12.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# The views themselves


def test_batch_augment_shapes_and_local_crop_areas():
    recipe = A.get_augment_recipe("fmnist-quick+4x12")
    aug = BatchAugment(recipe, (0.5,), (0.25,), 28)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = aug(images, torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(5, 1, 20, 20)] * 2 + [(5, 1, 12, 12)] * 4
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)
    assert count_global(views) == 2
    assert not torch.equal(views[2], views[3])  # independent crops per local view
    params = A.sample_view_params(recipe.views[2], 4000, 28, 28, torch.Generator().manual_seed(2))
    area = params.boxes[:, 2] * params.boxes[:, 3] / (28 * 28)
    assert 0.05 - 1e-6 <= area.min() and area.max() <= 0.14 + 1e-6
    assert area.max() - area.min() > 0.07  # spans the range


def test_rgb_multicrop_at_cifar_size():
    aug = BatchAugment(A.get_augment_recipe("simclr-small+6x16"), [0.5] * 3, [0.25] * 3, 32)
    views = aug(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in views] == [32, 32] + [16] * 6 and count_global(views) == 2


# ------------------------------------------------------------------------------------------------
# count_global / crop_pairs


def test_count_global_counts_leading_views_of_the_first_resolution():
    big, small = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)
    assert count_global([big, big]) == 2
    assert count_global([big, big, small, small, small, small]) == 2
    assert count_global([big]) == 1
    assert count_global([big, small, big]) == 1  # only the leading run counts


def test_crop_pairs_two_global_four_local():
    pairs = crop_pairs(2, 6)
    assert pairs == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0), (1, 2), (1, 3), (1, 4), (1, 5)]
    assert len(pairs) == 2 * (4 + 1)
    assert crop_pairs(2, 2) == [(0, 1), (1, 0)]
    assert crop_pairs(1, 3) == [(0, 1), (0, 2)]
    assert all(t < 2 and t != p for t, p in pairs)


@pytest.mark.parametrize("num_global, num_views", [(1, 1), (0, 4), (3, 2), (-1, 3)])
def test_crop_pairs_errors(num_global, num_views):
    with pytest.raises(ValueError, match="num_global"):
        crop_pairs(num_global, num_views)


def test_byol_uses_local_views_and_keeps_the_two_view_loss():
    """BYOL with 2 global + 2 local views: targets from the global views, every other view predicts
    them, scaled so that plain two views give the paper's L + L~ exactly."""
    from sslbench.benchmark.backbones import build_backbone
    from sslbench.methods import StepContext, get_method
    from sslbench.methods.losses import byol_loss

    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 1, 16)
    method = get_method("byol").build(backbone, dim, {"proj_hidden_dim": 16, "proj_dim": 8,
                                                      "pred_hidden_dim": 16}).eval()
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 1, 16, 16, generator=g) for _ in range(2)]
    views += [torch.randn(4, 1, 8, 8, generator=g) for _ in range(2)]
    online = [method.predictor(method.projector(method.encoder(v))) for v in views]
    target = [method.target_projector(method.target_encoder(v)) for v in views[:2]]
    two = method.training_step(views[:2], StepContext()).loss
    torch.testing.assert_close(two, byol_loss(online[0], target[1]) + byol_loss(online[1], target[0]))
    four = method.training_step(views, StepContext()).loss
    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = sum(byol_loss(online[j], target[i]) for i, j in pairs) * 2 / len(pairs)
    torch.testing.assert_close(four, expected)
