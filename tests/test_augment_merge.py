"""BatchAugment's merged path (views of a group as one batch) and its output dtype / memory format.

The merged path is the default off the CPU; on CPU it is forced here and must give the per-view
path's views bit for bit, with the same parameters and the same random stream.
"""

import dataclasses
import random

import pytest
import torch

from sslbench.benchmark import augment as A
from sslbench.benchmark.augment import AugmentRecipe, BatchAugment, ViewSpec
from sslbench.benchmark.contrastive_crop import ContrastiveCropSampler

# Registered recipes and multi-crop derivations, whose local views form a second group.
RECIPES = A.list_augment_recipes() + ["simclr+6x16", "byol+2x16", "fmnist-quick+4x12", "byol-no-blur"]
MERGING = [n for n in RECIPES if any(len(g) > 1 for g in A.merge_groups(
    A.get_augment_recipe(n).views, [v.output_size(32) for v in A.get_augment_recipe(n).views]))]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _images(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w or h), generator=g, dtype=torch.uint8)


def _pair(recipe: AugmentRecipe, channels: int, size: int, **kwargs: object) -> tuple[BatchAugment, BatchAugment]:
    """The per-view and the merged BatchAugment of ``recipe``."""
    mean, std = MEAN[:channels], STD[:channels]
    return (BatchAugment(recipe, mean, std, size, merge_views=False, **kwargs),
            BatchAugment(recipe, mean, std, size, merge_views=True, **kwargs))


def _assert_same_params(a: list[A.ViewParams], b: list[A.ViewParams]) -> None:
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        for f in dataclasses.fields(A.ViewParams):
            assert torch.equal(getattr(pa, f.name), getattr(pb, f.name)), f.name


# ------------------------------------------------------------------------------------------------
# Grouping


def test_the_merging_recipes_include_simclr_byol_and_multicrop():
    assert {"simclr", "simclr-small", "byol", "byol-small", "mocov2", "multicrop-small", "simclr+6x16"} <= set(MERGING)
    assert "linear-eval" not in MERGING  # one view


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_groups_are_the_views_of_each_size(name):
    # Within every registered recipe the views of one size run the same ops (BYOL: the blur and
    # solarize probabilities differ, which is unioned), so the groups are exactly the sizes.
    recipe = A.get_augment_recipe(name)
    aug = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32)
    by_size: dict[int, list[int]] = {}
    for v, size in enumerate(aug.view_sizes):
        by_size.setdefault(size, []).append(v)
    assert aug.view_groups == tuple(tuple(g) for g in by_size.values())


_BASE = ViewSpec(blur_p=0.5, solarize_p=0.2)


@pytest.mark.parametrize("other, merges", [
    (_BASE, True),
    (dataclasses.replace(_BASE, size=24), False),  # another output side
    (dataclasses.replace(_BASE, flip_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0), True),  # masked ops: union
    (dataclasses.replace(_BASE, blur_p=1.0, solarize_p=0.0, blur_sigma=(0.5, 1.0)), True),  # sigma: a drawn value
    (dataclasses.replace(_BASE, brightness=0.8, contrast=0.1, crop_scale=(0.5, 1.0), jitter_p=0.3), True),
    (dataclasses.replace(_BASE, jitter_p=0.0), False),  # jitter off: the ops are skipped, not identity
    (dataclasses.replace(_BASE, brightness=0.0), False),
    (dataclasses.replace(_BASE, contrast=0.0), False),
    (dataclasses.replace(_BASE, saturation=0.0), False),
    (dataclasses.replace(_BASE, hue=0.0), False),
    (dataclasses.replace(_BASE, blur_kernel_frac=0.2), False),  # kernel 7 vs 3 at 32 px
    (dataclasses.replace(_BASE, blur_kernel_frac=0.11), True),  # the same kernel side, 3
    (dataclasses.replace(_BASE, blur_kernel_frac=0.2, blur_p=0.0), True),  # no blur: its kernel does not matter
    (dataclasses.replace(_BASE, solarize_threshold=0.3), False),
    (dataclasses.replace(_BASE, solarize_threshold=0.3, solarize_p=0.0), True),
])  # fmt: skip
def test_merge_groups_rule(other, merges):
    expected = ((0, 1),) if merges else ((0,), (1,))
    assert A.merge_groups((_BASE, other), (32, other.output_size(32))) == expected


def test_merge_groups_takes_each_view_into_the_first_group_that_admits_it():
    small = ViewSpec(size=16)
    no_jitter = ViewSpec(jitter_p=0.0)
    views = (ViewSpec(), small, no_jitter, ViewSpec(flip_p=0.0), small, no_jitter)
    assert A.merge_groups(views, [v.output_size(32) for v in views]) == ((0, 3), (1, 4), (2, 5))
    # The group's blur kernel is set by its first blurring view, whatever came before.
    blurs = (ViewSpec(), ViewSpec(blur_p=0.5), ViewSpec(blur_p=0.5, blur_kernel_frac=0.2), ViewSpec())
    assert A.merge_groups(blurs, [32] * 4) == ((0, 1, 3), (2,))
    with pytest.raises(ValueError, match="one size per view"):
        A.merge_groups(blurs, [32])


def test_merge_is_the_default_off_the_cpu_only():
    recipe = A.get_augment_recipe("simclr")
    auto = BatchAugment(recipe, MEAN, STD, 32)
    assert not auto.merges_on(torch.device("cpu"))
    assert auto.merges_on(torch.device("cuda")) and auto.merges_on(torch.device("mps"))
    assert BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views=True).merges_on(torch.device("cpu"))
    assert not BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views=False).merges_on(torch.device("cuda"))
    x = _images(6, 3, 32)
    per, _ = _pair(recipe, 3, 32)
    assert all(torch.equal(a, b) for a, b in zip(auto(x, torch.Generator().manual_seed(0)),
                                                 per(x, torch.Generator().manual_seed(0))))


# ------------------------------------------------------------------------------------------------
# Bit-identity with the per-view path


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MERGING)
def test_merged_views_and_params_are_bit_identical_to_per_view(name, channels, chunked, monkeypatch):
    if chunked:  # CPU chunks of 8 images, which straddle the views on the merged path
        monkeypatch.setattr(A, "CPU_CHUNK_VALUES", 1)
    per, merged = _pair(A.get_augment_recipe(name), channels, 32)
    x = _images(13, channels, 32, 36)
    g_per, g_merged = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    views_per, params_per = per(x, g_per, return_params=True)
    views_merged, params_merged = merged(x, g_merged, return_params=True)
    assert len(views_merged) == len(views_per) == merged.num_views
    for a, b in zip(views_per, views_merged):
        assert b.dtype == torch.float32 and b.is_contiguous()
        assert torch.equal(a, b)
    _assert_same_params(params_per, params_merged)
    assert torch.equal(g_per.get_state(), g_merged.get_state())  # the same draws, no more


@pytest.mark.parametrize("name", ["simclr", "byol", "multicrop-small"])
def test_merged_path_with_a_contrastive_crop_sampler(name):
    boxes = torch.rand(10, 2, generator=torch.Generator().manual_seed(1)) * 0.4
    sampler = ContrastiveCropSampler(torch.cat((boxes, boxes + 0.5), dim=1), 0.6)  # (top, left, bottom, right)
    per, merged = _pair(A.get_augment_recipe(name), 3, 32)
    x = _images(10, 3, 32)
    g_per, g_merged = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    views_per, params_per = per(x, g_per, sampler, return_params=True)
    views_merged, params_merged = merged(x, g_merged, sampler, return_params=True)
    assert all(torch.equal(a, b) for a, b in zip(views_per, views_merged))
    _assert_same_params(params_per, params_merged)
    assert torch.equal(g_per.get_state(), g_merged.get_state())
    plain, _ = per(x, torch.Generator().manual_seed(2), return_params=True)
    assert not torch.equal(plain[0], views_per[0])  # the sampler did place the crops


@pytest.mark.parametrize("name", ["simclr", "byol", "multicrop-small"])
def test_merged_path_with_view_images(name):
    recipe = A.get_augment_recipe(name)
    per, merged = _pair(recipe, 3, 32)
    x = _images(9, 3, 32)
    composites = [_images(9, 3, 32, seed=10 + v) for v in range(len(recipe.views))]
    views_per = per(x, torch.Generator().manual_seed(5), view_images=composites)
    views_merged = merged(x, torch.Generator().manual_seed(5), view_images=composites)
    assert all(torch.equal(a, b) for a, b in zip(views_per, views_merged))
    same = merged(x, torch.Generator().manual_seed(5), view_images=[x] * len(recipe.views))
    assert all(torch.equal(a, b) for a, b in zip(same, merged(x, torch.Generator().manual_seed(5))))


def _random_spec(rng: random.Random, base: ViewSpec) -> ViewSpec:
    """``base`` with random changes, mostly to what merge_groups unions."""
    changes: dict[str, object] = {
        "flip_p": rng.choice((0.0, 0.5, 1.0)), "grayscale_p": rng.choice((0.0, 0.5, 1.0)),
        "blur_p": rng.choice((0.0, 0.5, 1.0)), "solarize_p": rng.choice((0.0, 0.5, 1.0)),
        "blur_sigma": rng.choice(((0.1, 2.0), (1.0, 3.0))), "crop_scale": rng.choice(((0.08, 1.0), (0.5, 1.0))),
        "brightness": rng.choice((0.4, 0.8)), "jitter_p": rng.choice((0.5, 1.0)),
    }  # fmt: skip
    if rng.random() < 0.3:  # now and then something that may split the group
        key, values = rng.choice([("size", (None, 24)), ("hue", (0.0, 0.1)), ("blur_kernel_frac", (0.1, 0.2)),
                                  ("solarize_threshold", (0.5, 0.3)), ("jitter_p", (0.0, 0.8))])
        changes[key] = rng.choice(values)
    return dataclasses.replace(base, **changes)


def test_random_recipes_merge_bit_identically():
    rng = random.Random(0)
    merged_groups = 0
    for trial in range(40):
        base = ViewSpec(saturation=rng.choice((0.0, 0.4)), hue=rng.choice((0.0, 0.1)))
        recipe = AugmentRecipe("t", tuple(_random_spec(rng, base) for _ in range(3)), "t")
        channels = rng.choice((1, 3))
        per, merged = _pair(recipe, channels, 48)
        merged_groups += sum(len(g) > 1 for g in merged.view_groups)
        x = _images(5, channels, 48, seed=trial)
        views_per = per(x, torch.Generator().manual_seed(trial))
        views_merged = merged(x, torch.Generator().manual_seed(trial))
        assert all(torch.equal(a, b) for a, b in zip(views_per, views_merged)), (merged.view_groups, recipe.views)
    assert merged_groups >= 30  # most trials merge


# ------------------------------------------------------------------------------------------------
# Output dtype and memory format


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("out_dtype, channels_last", [(torch.bfloat16, False), (torch.float32, True),
                                                      (torch.bfloat16, True), (torch.float16, False)])
@pytest.mark.parametrize("name", ["simclr", "byol", "multicrop-small"])
def test_out_dtype_and_channels_last_equal_converting_the_float32_views(
        name, out_dtype, channels_last, chunked, merge, monkeypatch):
    if chunked:
        monkeypatch.setattr(A, "CPU_CHUNK_VALUES", 1)
    recipe = A.get_augment_recipe(name)
    plain = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views=merge)
    converted = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views=merge, out_dtype=out_dtype,
                             channels_last=channels_last)
    x = _images(11, 3, 32)
    reference = plain(x, torch.Generator().manual_seed(6))
    for a, b in zip(reference, converted(x, torch.Generator().manual_seed(6))):
        assert b.dtype == out_dtype and b.shape == a.shape
        if channels_last:
            assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        else:
            assert b.is_contiguous()
        assert torch.equal(b, a.to(out_dtype))


def test_bad_output_options_are_rejected():
    recipe = A.get_augment_recipe("simclr")
    with pytest.raises(ValueError, match="out_dtype"):
        BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, out_dtype=torch.uint8)
    with pytest.raises(ValueError, match="channels_last"):
        BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, channels_last=1)
    with pytest.raises(ValueError, match="merge_views"):
        BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views="auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["simclr", "byol", "multicrop-small"])
def test_merged_path_on_cuda_matches_per_view(name):
    # cuDNN / reductions may pick other kernels for the larger batch: close, not necessarily equal.
    recipe = A.get_augment_recipe(name)
    per = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32, merge_views=False)
    auto = BatchAugment(recipe, [0.5] * 3, [0.25] * 3, 32)
    x = _images(64, 3, 32).cuda()
    g_per, g_auto = torch.Generator("cuda").manual_seed(1), torch.Generator("cuda").manual_seed(1)
    views_per, params_per = per(x, g_per, return_params=True)
    views_auto, params_auto = auto(x, g_auto, return_params=True)
    _assert_same_params(params_per, params_auto)
    for a, b in zip(views_per, views_auto):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
