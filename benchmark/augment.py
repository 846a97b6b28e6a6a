"""Batched data augmentation: whole batches as tensor ops, independent random parameters per image.

The SSL papers define their augmentations with torchvision-style per-image transforms
(RandomResizedCrop, ColorJitter, ...). Applied image by image in a Python loop they are as slow as
the training step itself (≈ 1,600 img/s on 2 CPU cores); here every operation runs on the whole
batch at once, on the training device, with per-image parameters drawn from a ``torch.Generator``
that lives on the same device. A run is reproducible from the generator's seed; no global RNG is
used and there is no per-image Python loop.

Pipeline of one view (:func:`apply_view`): random resized crop + resize (one ``grid_sample`` with a
broadcast-built grid; the horizontal flip is folded into the grid) -> colour jitter (brightness,
contrast, saturation, hue) -> grayscale -> Gaussian blur -> solarize. :class:`BatchAugment` adds the
uint8 -> float conversion and the normalisation; on CPU it runs each view in cache-sized chunks of
images (the ops are memory-bound), with the parameters drawn for the whole batch first, so the
result does not depend on the chunking. On other devices it runs the views that share a pass
(:func:`merge_groups`: e.g. SimCLR's or BYOL's two views) as one concatenated batch, which halves
the kernel launches and gives the same views; it can return them directly in the model's dtype
(bf16) and memory format (channels-last).

Named recipes live in a registry (:func:`register_augment_recipe`, ``sslbench augmentations``).
:func:`get_augment_recipe` also resolves *derived* names, so a sweep can ablate augmentations by
name: ``<base>-no-<t>[-no-<t2>...]`` drops transforms from every view of a registered recipe and
``<base>-only-<t1>[+<t2>...]`` keeps only those, with t in :data:`AUGMENT_TRANSFORMS` (e.g.
``fmnist-quick-no-color``, ``simclr-only-crop+color``); ``<name>+<N>x<size>`` adds N multi-crop
local views of ``size`` px to any of these (:func:`add_local_views`, e.g. ``fmnist-quick+4x12``,
``simclr+6x96``, ``simclr-only-crop+color+6x96``); registered names always win.

Documented deviations from torchvision's per-image transforms:
    * Crop boxes are continuous (sub-pixel) rather than rounded to whole pixels, so the sampled
      area fraction is exactly the drawn one; on 28-px images rounding would quantise it visibly.
    * The resize is bilinear without antialiasing. It only matters when a view's output side is
      smaller than its crop (e.g. a large crop resized to a half-size local view).
    * Colour jitter applies brightness, contrast, saturation, hue in this fixed order;
      torchvision's ColorJitter draws a random order per call.
    * On 1-channel images saturation, hue and grayscale are no-ops (as in torchvision / PIL).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, overload

import torch
import torch.nn.functional as F

from sslbench.benchmark.errors import ConfigError, unknown_name

__all__ = [
    "AUGMENT_TRANSFORMS",
    "LOCAL_CROP_SCALE",
    "AugmentRecipe",
    "BatchAugment",
    "ViewParams",
    "ViewSpec",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "add_local_views",
    "apply_view",
    "blur_kernel_size",
    "crop_resize",
    "derive_augment_recipe",
    "gaussian_blur",
    "get_augment_recipe",
    "grayscale",
    "list_augment_recipes",
    "merge_groups",
    "normalize",
    "register_augment_recipe",
    "sample_view_params",
    "solarize",
    "to_float_normalized",
]

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
# RandomResizedCrop tries this many (area, ratio) draws before falling back to the centre crop.
_CROP_TRIES = 10
#: On CPU, BatchAugment works on chunks of about this many float values per image tensor.
CPU_CHUNK_VALUES = 2**18


# --------------------------------------------------------------------------------------------
# Specs and the recipe registry
# --------------------------------------------------------------------------------------------


def _pair(name: str, value: object) -> tuple[float, float]:
    """Returns ``value`` as a (lo, hi) float pair or raises ConfigError."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(
            f"ViewSpec.{name} must be a pair (lo, hi) of numbers, got {value!r}.",
            f"Pass e.g. {name}=(0.08, 1.0).",
        )
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ConfigError(f"ViewSpec.{name}={value!r} needs finite lo <= hi.", "Swap or fix the bounds.")
    return lo, hi


def _number(name: str, value: object, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """Returns ``value`` as a float in [lo, hi] (or (lo, hi] with ``open_lo``) or raises ConfigError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"ViewSpec.{name} must be a number, got {value!r}.", "")
    v = float(value)
    inside = (lo < v if open_lo else lo <= v) and v <= hi
    if not inside:
        interval = f"{'(' if open_lo else '['}{lo}, {hi}]"
        raise ConfigError(f"ViewSpec.{name}={value!r} is outside {interval}.", f"Choose {name} in {interval}.")
    return v


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one view, with torchvision-style parameters.

    Args:
        size: output side in px; None -> ``relative_size`` × the dataset's image size.
        crop_scale: RandomResizedCrop range of the crop's area as a fraction of the image's.
        crop_ratio: RandomResizedCrop range of the crop's aspect ratio (width / height),
            sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability that colour jitter is applied to an image.
        brightness: brightness factor drawn uniformly from [max(0, 1 - b), 1 + b].
        contrast: contrast factor drawn uniformly from [max(0, 1 - c), 1 + c].
        saturation: saturation factor drawn uniformly from [max(0, 1 - s), 1 + s].
        hue: hue shift (in turns) drawn uniformly from [-hue, hue]; at most 0.5.
        grayscale_p: probability of converting to grayscale (kept 3-channel).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation in output pixels.
        blur_kernel_frac: kernel side as a fraction of the output side, made odd as in the
            official SimCLR code (``radius = int(frac * side) // 2``, ``kernel = 2 * radius + 1``).
        solarize_p: probability of solarizing (pixels >= threshold become 1 - pixel).
        solarize_threshold: solarize threshold on the [0, 1] scale.
        relative_size: output side as a fraction of the dataset's image size, used only when
            ``size`` is None (multi-crop local views: e.g. 0.5 for half-size crops).

    Raises:
        ConfigError: a value out of range.
    """

    size: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    relative_size: float = 1.0

    def __post_init__(self) -> None:
        if self.size is not None and (
            not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1
        ):
            raise ConfigError(f"ViewSpec.size must be a positive int or None, got {self.size!r}.", "")
        scale = _pair("crop_scale", self.crop_scale)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(
                f"ViewSpec.crop_scale={self.crop_scale!r} needs 0 < lo <= hi <= 1.",
                "It is the crop's area as a fraction of the image's.",
            )
        ratio = _pair("crop_ratio", self.crop_ratio)
        if not ratio[0] > 0.0:
            raise ConfigError(f"ViewSpec.crop_ratio={self.crop_ratio!r} needs 0 < lo <= hi.", "")
        sigma = _pair("blur_sigma", self.blur_sigma)
        if not sigma[0] > 0.0:
            raise ConfigError(f"ViewSpec.blur_sigma={self.blur_sigma!r} needs 0 < lo <= hi.", "")
        object.__setattr__(self, "crop_scale", scale)
        object.__setattr__(self, "crop_ratio", ratio)
        object.__setattr__(self, "blur_sigma", sigma)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p", "solarize_threshold"):
            object.__setattr__(self, name, _number(name, getattr(self, name), 0.0, 1.0))
        for name in ("brightness", "contrast", "saturation"):
            object.__setattr__(self, name, _number(name, getattr(self, name), 0.0, math.inf))
        object.__setattr__(self, "hue", _number("hue", self.hue, 0.0, 0.5))
        frac = _number("blur_kernel_frac", self.blur_kernel_frac, 0.0, 1.0, open_lo=True)
        object.__setattr__(self, "blur_kernel_frac", frac)
        rel = _number("relative_size", self.relative_size, 0.0, 1.0, open_lo=True)
        object.__setattr__(self, "relative_size", rel)

    def output_size(self, image_size: int) -> int:
        """The view's output side for a dataset of ``image_size`` px images."""
        if self.size is not None:
            return self.size
        return max(1, round(self.relative_size * image_size))


@dataclass(frozen=True)
class AugmentRecipe:
    """A named set of views; ``len(recipe.views)`` is the number of views per image.

    Args:
        name: registry name.
        views: one spec per view (views may differ, e.g. BYOL's asymmetric pair or multi-crop).
        source: the paper table / official config every value comes from, with deviations.

    Raises:
        ConfigError: an empty name, source or view list.
    """

    name: str
    views: tuple[ViewSpec, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"AugmentRecipe.name must be a non-empty string, got {self.name!r}.", "")
        views = tuple(self.views)
        if not views or not all(isinstance(v, ViewSpec) for v in views):
            raise ConfigError(
                f"AugmentRecipe '{self.name}' needs at least one view, each a ViewSpec.", ""
            )
        object.__setattr__(self, "views", views)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(
                f"AugmentRecipe '{self.name}' has no source.",
                "Name the paper table or official config its values come from.",
            )


_RECIPES: dict[str, AugmentRecipe] = {}


def register_augment_recipe(recipe: AugmentRecipe) -> AugmentRecipe:
    """Adds ``recipe`` to the registry and returns it.

    Raises:
        ConfigError: a recipe of that name is already registered.
    """
    if recipe.name in _RECIPES:
        raise ConfigError(
            f"Augmentation recipe '{recipe.name}' is already registered.",
            "Choose another name.",
        )
    _RECIPES[recipe.name] = recipe
    return recipe


def list_augment_recipes() -> list[str]:
    """The registered recipe names, sorted."""
    return sorted(_RECIPES)


def get_augment_recipe(name: str) -> AugmentRecipe:
    """The recipe called ``name``: a registered one, or one derived from a registered one.

    Registered names always win. Otherwise a name ending in ``+<N>x<size>`` (a last ``+``
    segment that starts with a digit; transform names never do) is
    ``add_local_views(<the rest>, N, size)``, the rest being any name this function resolves, so
    the suffix composes with the ablations below (``simclr-only-crop+color+6x96``: the ablation
    first, the local views last). Then ``<base>-no-<t>[-no-<t2>...]`` is
    ``derive_augment_recipe(base, drop=(t, t2, ...))`` and ``<base>-only-<t1>[+<t2>...]`` is
    ``derive_augment_recipe(base, keep=(t1, t2, ...))``, named ``name``; the base is the longest
    registered prefix (``simclr-no-color-no-blur`` derives from the registered
    ``simclr-no-color``). Derived recipes are built on each call and never registered, so
    :func:`list_augment_recipes` lists the registered ones only.

    Raises:
        UnknownNameError: neither a registered nor a derived name of a registered base (the
            message lists the valid recipes and the derived syntax).
        ConfigError: a derived name with an unknown, repeated or absent transform, or a bad
            multi-crop suffix (see :func:`add_local_views`).
    """
    if name in _RECIPES:
        return _RECIPES[name]
    local = _parse_local_views(name)
    if local is not None:
        return add_local_views(*local, name=name)
    parsed = _parse_derived(name)
    if parsed is None:
        raise unknown_name("augmentation recipe", name, _RECIPES, _DERIVED_HINT) from None
    base, mode, transforms = parsed
    if mode == "no":
        return derive_augment_recipe(base, drop=transforms, name=name)
    return derive_augment_recipe(base, keep=transforms, name=name)


# --------------------------------------------------------------------------------------------
# Derived recipes (augmentation ablations by name)
# --------------------------------------------------------------------------------------------

#: The transforms a derived recipe can drop or keep; ``color`` is ``jitter`` and ``grayscale``.
AUGMENT_TRANSFORMS: tuple[str, ...] = ("crop", "flip", "color", "jitter", "grayscale", "blur", "solarize")
# Each transform as the elementary switches it covers.
_PARTS: dict[str, tuple[str, ...]] = {
    "crop": ("crop",), "flip": ("flip",), "color": ("jitter", "grayscale"), "jitter": ("jitter",),
    "grayscale": ("grayscale",), "blur": ("blur",), "solarize": ("solarize",),
}  # fmt: skip
# How each elementary switch is turned off in a ViewSpec. Crop off = the whole image resized:
# area fraction and aspect ratio fixed to 1 (on a non-square image, the centre square).
_OFF: dict[str, dict[str, object]] = {
    "crop": {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)},
    "flip": {"flip_p": 0.0},
    "jitter": {"jitter_p": 0.0},
    "grayscale": {"grayscale_p": 0.0},
    "blur": {"blur_p": 0.0},
    "solarize": {"solarize_p": 0.0},
}
_DERIVED_SYNTAX = (
    "Derived names: <recipe>-no-<t>[-no-<t2>...] drops transforms from every view of a registered "
    "recipe, <recipe>-only-<t1>[+<t2>...] keeps only those, and a last +<N>x<size> (e.g. "
    "fmnist-quick+4x12) adds N multi-crop local views of size px"
)
_TRANSFORMS_TEXT = f"{', '.join(AUGMENT_TRANSFORMS)} (color = jitter + grayscale)"
_DERIVED_HINT = (
    f"{_DERIVED_SYNTAX}; t is one of {_TRANSFORMS_TEXT}. `sslbench augmentations` lists the "
    "registered recipes."
)


def _applies(spec: ViewSpec, part: str) -> bool:
    """Whether view ``spec`` applies the elementary transform ``part`` at all."""
    if part == "crop":
        return spec.crop_scale != (1.0, 1.0) or spec.crop_ratio != (1.0, 1.0)
    if part == "jitter":
        strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
        return spec.jitter_p > 0 and any(x > 0 for x in strengths)
    p = {"flip": spec.flip_p, "grayscale": spec.grayscale_p, "blur": spec.blur_p, "solarize": spec.solarize_p}
    return p[part] > 0


def _applied(recipe: AugmentRecipe) -> list[str]:
    """The transforms (:data:`AUGMENT_TRANSFORMS`) that some view of ``recipe`` applies."""
    return [t for t in AUGMENT_TRANSFORMS if any(_applies(v, p) for v in recipe.views for p in _PARTS[t])]


def _parse_derived(name: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``(base, "no" | "only", transforms)`` for a derived name of a registered base, else None
    (and an error for a derived-looking name whose base is not registered)."""
    rest, dropped = name, list[str]()
    while rest not in _RECIPES:  # '-no-' suffixes, until the longest registered prefix
        head, sep, token = rest.rpartition("-no-")
        if not sep:
            break
        dropped.insert(0, token)
        rest = head
    if rest in _RECIPES and dropped:
        return rest, "no", tuple(dropped)
    at = name.rfind("-only-")
    while at > 0:
        if name[:at] in _RECIPES:
            return name[:at], "only", tuple(name[at + len("-only-") :].split("+"))
        at = name.rfind("-only-", 0, at)
    if "-only-" in name or "-no-" in name:
        base = name[: name.rfind("-only-")] if "-only-" in name else name.split("-no-")[0]
        if _LOCAL_SUFFIX.search(base):
            raise _ablation_after_suffix(name)
        raise unknown_name(
            "augmentation recipe",
            base,
            _RECIPES,
            f"'{name}' reads as a recipe derived from '{base}', which is not registered. {_DERIVED_HINT}",
        )
    return None


def _check_transforms(name: str, base: AugmentRecipe, transforms: Sequence[str]) -> list[str]:
    """The elementary switches ``transforms`` name, after checking each is known, named once and
    applied by some view of ``base``."""
    parts: list[str] = []
    for i, t in enumerate(transforms):
        if t not in _PARTS:
            raise ConfigError(
                f"Augmentation recipe '{name}' names the transform '{t}', which a derived recipe "
                f"cannot drop or keep.",
                f"Valid transforms: {_TRANSFORMS_TEXT}. {_DERIVED_SYNTAX}.",
            )
        overlap = [p for p in _PARTS[t] if p in parts]
        if overlap:
            why = "" if t in transforms[:i] else " (color = jitter + grayscale)"
            raise ConfigError(
                f"Augmentation recipe '{name}' names '{overlap[0]}' twice{why}.", "Name each transform once."
            )
        if t not in _applied(base):
            raise ConfigError(
                f"Augmentation recipe '{name}' names '{t}', which no view of '{base.name}' applies, "
                f"so it would not ablate anything.",
                f"Choose among the transforms '{base.name}' applies: {', '.join(_applied(base))}.",
            )
        parts.extend(_PARTS[t])
    return parts


def derive_augment_recipe(
    base: str, *, drop: Sequence[str] = (), keep: Sequence[str] | None = None, name: str | None = None
) -> AugmentRecipe:
    """A registered recipe with transforms turned off in every view (an augmentation ablation).

    ``drop`` turns the named transforms off; ``keep`` turns off every transform except the named
    ones. Off means: crop -> ``crop_scale = crop_ratio = (1, 1)`` (the whole image, resized to the
    view's size); flip, jitter, grayscale, blur, solarize -> their probability 0; color -> jitter
    and grayscale. Every other value (strengths, sizes, the number of views) stays the base's.

    Args:
        base: a registered recipe name.
        drop: transforms to turn off (:data:`AUGMENT_TRANSFORMS`).
        keep: transforms to keep, all others off; exclusive with ``drop``.
        name: the derived recipe's name; default ``<base>-no-<t>...`` / ``<base>-only-<t>+...``.

    Raises:
        UnknownNameError: ``base`` is not registered.
        ConfigError: an unknown or repeated transform, one no view of ``base`` applies, both or
            neither of ``drop`` / ``keep``, or a ``keep`` that keeps every transform ``base`` has.
    """
    if base not in _RECIPES:
        raise unknown_name("augmentation recipe", base, _RECIPES, "`sslbench augmentations` lists them.")
    recipe = _RECIPES[base]
    if (keep is None and not drop) or (keep is not None and (drop or not keep)):
        raise ConfigError("derive_augment_recipe needs a non-empty drop or keep, not both.", "")
    named = tuple(drop) if keep is None else tuple(keep)
    if name is None:
        name = base + ("".join(f"-no-{t}" for t in named) if keep is None else "-only-" + "+".join(named))
    parts = _check_transforms(name, recipe, named)
    off = parts if keep is None else [p for p in _OFF if p not in parts]
    if keep is not None and not any(_applies(v, p) for v in recipe.views for p in off):  # a no-op
        raise ConfigError(
            f"Augmentation recipe '{name}' keeps every transform '{base}' applies: it is '{base}'.",
            f"Use '{base}', or keep fewer transforms.",
        )
    changes: dict[str, object] = {k: v for p in off for k, v in _OFF[p].items()}
    views = tuple(replace(v, **changes) for v in recipe.views)  # type: ignore[arg-type]
    what = f"without {' and '.join(named)}" if keep is None else f"with only {' + '.join(named)}"
    knobs = ", ".join(f"{k}={v}" for k, v in changes.items())
    crop = ""
    if "crop" in off:
        crop = " Crop off = the whole image resized (on a non-square image, its centre square)."
    source = (
        f"Derived from '{base}' {what} in every view ({knobs}); an augmentation ablation by name "
        f"(sslbench.benchmark.augment.derive_augment_recipe).{crop} Base '{base}': {recipe.source}"
    )
    return AugmentRecipe(name, views, source)


# --------------------------------------------------------------------------------------------
# Derived recipes: multi-crop local views for any recipe
# --------------------------------------------------------------------------------------------

#: Area fraction of a multi-crop local view: SwAV's ``--min_scale_crops 0.14 0.05
#: --max_scale_crops 1. 0.14`` (facebookresearch/swav scripts/swav_800ep_pretrain.sh, paper §4.1),
#: also DINO's ResNet-50 recipe (``--local_crops_scale 0.05 0.14``, facebookresearch/dino README).
LOCAL_CROP_SCALE: tuple[float, float] = (0.05, 0.14)
#: Smallest local view side accepted (px).
MIN_LOCAL_SIZE = 4
# The multi-crop suffix: a last '+' segment that starts with a digit (no transform name does);
# it must then read <N>x<size>.
_LOCAL_SUFFIX = re.compile(r"\+(\d[^+]*)$")
_LOCAL_SPEC = re.compile(r"(\d+)x(\d+)")


def _ablation_after_suffix(name: str) -> ConfigError:
    return ConfigError(f"Augmentation recipe '{name}' applies an ablation after a multi-crop suffix.",
                       "Put the +<N>x<size> suffix last, after every -no-/-only- part "
                       "(e.g. fmnist-quick-no-color+4x12).")


def _parse_local_views(name: str) -> tuple[str, int, int] | None:
    """``(base, N, size)`` for a name ending in ``+<N>x<size>``, else None.

    Raises:
        ConfigError: a last ``+`` segment that starts with a digit but is not ``<N>x<size>`` in
            canonical form (decimal, no leading zeros), is followed by an ablation, or has an
            empty base.
    """
    match = _LOCAL_SUFFIX.search(name)
    if match is None:
        return None
    segment = match.group(1)
    spec = _LOCAL_SPEC.fullmatch(segment)
    if spec is None and re.match(r"\d+x\d+-(no|only)-", segment):
        raise _ablation_after_suffix(name)
    canonical = spec is not None and all(str(int(g)) == g for g in spec.groups())
    if spec is None or not canonical or match.start() == 0:
        raise ConfigError(
            f"Augmentation recipe '{name}' ends in the multi-crop suffix '+{segment}', which does "
            f"not read <recipe>+<N>x<size>.",
            "Write e.g. fmnist-quick+4x12 (4 local views of 12 px), both numbers decimal integers "
            "without leading zeros.",
        )
    return name[: match.start()], int(spec.group(1)), int(spec.group(2))


def add_local_views(base: str, num: int, size: int, *, name: str | None = None) -> AugmentRecipe:
    """A recipe with ``num`` multi-crop local views of ``size`` px appended (SwAV §3.2 multi-crop).

    Each local view is the base recipe's first view with ``crop_scale =``
    :data:`LOCAL_CROP_SCALE` (0.05-0.14 of the image's area, SwAV / DINO-ResNet local crops) and
    output side ``size``; every other setting (crop aspect ratio, flip, colour, blur, solarize)
    is the first view's, as SwAV's ``MultiCropDataset`` applies one colour/blur pipeline to every
    crop. The global views (all of the base's views) are unchanged and stay first, so
    :func:`sslbench.methods.multicrop.count_global` finds them by their resolution.

    Args:
        base: any recipe name :func:`get_augment_recipe` resolves (registered or derived,
            including another ``+<N>x<size>``).
        num: number of local views (>= 1).
        size: side of the local views in px (>= :data:`MIN_LOCAL_SIZE`; smaller than the first
            view's side where that side is fixed).
        name: the derived recipe's name; default ``<base>+<num>x<size>``.

    Raises:
        UnknownNameError: ``base`` does not resolve.
        ConfigError: ``num < 1``, ``size < 4``, a local side not smaller than the fixed global
            side (methods tell local from global views by resolution), or a base whose first
            view does not crop (``-no-crop``: the local views would crop anyway).
    """
    if name is None:
        name = f"{base}+{num}x{size}"
    for what, value, lowest in (("number of local views", num, 1), ("local view size", size, MIN_LOCAL_SIZE)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ConfigError(
                f"Augmentation recipe '{name}': the {what} must be an integer >= {lowest}, got {value!r}.",
                "Write <recipe>+<N>x<size>, e.g. fmnist-quick+4x12.",
            )
    recipe = get_augment_recipe(base)
    first = recipe.views[0]
    if first.size is not None and size >= first.size:
        raise ConfigError(
            f"Augmentation recipe '{name}' adds local views of {size} px to global views of "
            f"{first.size} px; local views must be smaller.",
            "Methods tell the global views from the local ones by resolution "
            "(sslbench.methods.multicrop.count_global); choose a smaller size.",
        )
    if not _applies(first, "crop"):
        raise ConfigError(
            f"Augmentation recipe '{name}' adds random local crops to '{base}', whose views do not crop.",
            "Multi-crop local views are crops by definition; drop the crop ablation or the suffix.",
        )
    local = replace(first, size=size, crop_scale=LOCAL_CROP_SCALE)
    source = (
        f"Derived from '{base}' + {num} multi-crop local view(s) of {size} px: the first view with "
        f"RandomResizedCrop area {LOCAL_CROP_SCALE[0]}-{LOCAL_CROP_SCALE[1]} (SwAV §3.2 / "
        f"scripts/swav_800ep_pretrain.sh --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14; DINO "
        f"ResNet-50 local_crops_scale 0.05 0.14), global views unchanged "
        f"(sslbench.benchmark.augment.add_local_views). Base '{base}': {recipe.source}"
    )
    return AugmentRecipe(name, recipe.views + (local,) * num, source)


# --------------------------------------------------------------------------------------------
# Per-image parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view for a batch; identity values where an op is not applied.

    Shape:
        boxes: (B, 4) crop boxes ``(top, left, height, width)`` in input pixels (continuous).
        flip, jitter, gray, blur, solarize: (B,) bool, whether the op is applied to each image.
        brightness, contrast, saturation: (B,) factors (1 where jitter is off).
        hue: (B,) hue shifts in turns (0 where jitter is off).
        sigma: (B,) blur standard deviations in output pixels (meaningful where ``blur``).
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def rows(self, index: slice) -> ViewParams:
        """The parameters of the images ``index`` (a slice of the batch)."""
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(params: Sequence[ViewParams]) -> ViewParams:
        """The parameters of several batches as one batch (``torch.cat`` per field, in order)."""
        return ViewParams(**{f.name: torch.cat([getattr(p, f.name) for p in params]) for f in fields(ViewParams)})


#: Replaces RandomResizedCrop's box placement (ContrastiveCrop, ``benchmark/contrastive_crop.py``):
#: ``(u, height, width, scale, ratio, generator) -> (B, 4)`` boxes, u as :func:`_crop_boxes` takes.
CropSampler = Callable[
    [torch.Tensor, int, int, tuple[float, float], tuple[float, float], torch.Generator], torch.Tensor
]


def _crop_sizes(
    u: torch.Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandomResizedCrop's crop ``(height, width, fits)`` from uniform draws (see :func:`_crop_boxes`);
    ``fits`` is False where no try fitted and the size is the centre-crop fallback's.

    Shape:
        u: (B, 2 * _CROP_TRIES + 2) uniforms in [0, 1) (the last two columns are not used).
        return: three (B,) tensors.
    """
    n = _CROP_TRIES
    area = (height * width) * (scale[0] + (scale[1] - scale[0]) * u[:, :n])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, n : 2 * n])
    w = torch.sqrt(area * aspect)
    h = torch.sqrt(area / aspect)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback: centre crop of the whole image, aspect ratio clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fb_w, fb_h = height * ratio[1], float(height)
    else:
        fb_w, fb_h = float(width), float(height)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w, torch.full_like(w, fb_w))
    h = torch.where(any_fit, h, torch.full_like(h, fb_h))
    return h, w, any_fit


def _crop_boxes(
    u: torch.Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """RandomResizedCrop boxes from uniform draws, vectorised over the batch and the tries.

    Like torchvision: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), the first of
    ``_CROP_TRIES`` draws that fits the image wins; none fits -> centre crop with the image's
    aspect ratio clamped to ``ratio``. Boxes are continuous (no rounding to whole pixels).

    Shape:
        u: (B, 2 * _CROP_TRIES + 2) uniforms in [0, 1).
        return: (B, 4) ``(top, left, height, width)``.
    """
    n = _CROP_TRIES
    h, w, any_fit = _crop_sizes(u, height, width, scale, ratio)
    top = torch.where(any_fit, u[:, 2 * n] * (height - h), (height - h) / 2)
    left = torch.where(any_fit, u[:, 2 * n + 1] * (width - w), (width - w) / 2)
    return torch.stack((top, left, h, w), dim=1)


def _factor(u: torch.Tensor, strength: float, apply: torch.Tensor) -> torch.Tensor:
    """Jitter factor ~ U[max(0, 1 - strength), 1 + strength] where ``apply``, else 1."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    return torch.where(apply, lo + (hi - lo) * u, torch.ones_like(u))


def sample_view_params(
    spec: ViewSpec, batch: int, height: int, width: int, generator: torch.Generator,
    crop_sampler: CropSampler | None = None,
) -> ViewParams:
    """Draws the per-image parameters of one view.

    All draws of a view come from ONE ``torch.rand`` call with a fixed column layout, so a
    parameter's values do not depend on which other ops are enabled: the same seed gives the same
    crops with and without blur, for instance (common random numbers for ablations).

    Args:
        spec: the view.
        batch: number of images B.
        height: input image height H.
        width: input image width W.
        generator: source of randomness; the parameters live on its device.
        crop_sampler: places the crop boxes instead of RandomResizedCrop (ContrastiveCrop); it
            gets the same crop columns and may draw more from ``generator`` after them. None:
            RandomResizedCrop.
    """
    n = _CROP_TRIES
    u = torch.rand((batch, 2 * n + 12), generator=generator, device=generator.device)
    c = 2 * n + 2  # first column after the crop draws
    jitter = u[:, c + 1] < spec.jitter_p
    hue_shift = spec.hue * (2.0 * u[:, c + 5] - 1.0)
    if crop_sampler is None:
        boxes = _crop_boxes(u[:, :c], height, width, spec.crop_scale, spec.crop_ratio)
    else:
        boxes = crop_sampler(u[:, :c], height, width, spec.crop_scale, spec.crop_ratio, generator)
    return ViewParams(
        boxes=boxes,
        flip=u[:, c] < spec.flip_p,
        jitter=jitter,
        brightness=_factor(u[:, c + 2], spec.brightness, jitter),
        contrast=_factor(u[:, c + 3], spec.contrast, jitter),
        saturation=_factor(u[:, c + 4], spec.saturation, jitter),
        hue=torch.where(jitter, hue_shift, torch.zeros_like(hue_shift)),
        gray=u[:, c + 6] < spec.grayscale_p,
        blur=u[:, c + 7] < spec.blur_p,
        sigma=spec.blur_sigma[0] + (spec.blur_sigma[1] - spec.blur_sigma[0]) * u[:, c + 8],
        solarize=u[:, c + 9] < spec.solarize_p,
    )


# --------------------------------------------------------------------------------------------
# Batched ops (float images in [0, 1], per-image parameters)
# --------------------------------------------------------------------------------------------


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crops each image to its box, resizes it to ``size`` × ``size`` and optionally flips it.

    Bilinear, matching ``torch.nn.functional.interpolate(..., align_corners=False)`` of the crop
    (torchvision's ``resized_crop`` with ``antialias=False``). The sampling grid is built by
    broadcasting a per-image x row and y column (``F.affine_grid`` is several times slower on
    CPU); the flip mirrors the x row, so it costs nothing.

    Args:
        images: float images.
        boxes: ``(top, left, height, width)`` in pixels; need not be integers.
        size: output side.
        flip: whether to flip each image horizontally; None -> no flips.

    Shape:
        images: (B, C, H, W)
        boxes: (B, 4)
        flip: (B,)
        return: (B, C, size, size)
    """
    b, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(dim=1)
    # Output pixel centre u in [0, size) maps to the fraction (u + 0.5) / size of the box; in
    # grid_sample's normalised coordinates (align_corners=False) that is (2 * left + t * w) / W - 1
    # with t = (2u + 1) / size. A flip mirrors t -> 2 - t.
    t = (2.0 * torch.arange(size, device=images.device, dtype=images.dtype) + 1.0) / size  # (S,)
    tx = t.expand(b, size)
    if flip is not None:
        tx = torch.where(flip[:, None], 2.0 - tx, tx)
    gx = _clamp_to_box((2.0 * left[:, None] + tx * w[:, None]) / width - 1.0, left, w, width)  # (B, S)
    gy = _clamp_to_box((2.0 * top[:, None] + t * h[:, None]) / height - 1.0, top, h, height)  # (B, S)
    grid = torch.stack((gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _clamp_to_box(g: torch.Tensor, start: torch.Tensor, extent: torch.Tensor, side: int) -> torch.Tensor:
    """Clamps normalised coordinates to the box's first and last pixel centres.

    This is how ``interpolate`` treats the edge of an already-cropped image, so for integer boxes
    the result equals torchvision's crop-then-resize (upsampling does not reach past the box).

    Shape:
        g: (B, S)
        start, extent: (B,)
        return: (B, S)
    """
    lo = (2.0 * start + 1.0) / side - 1.0
    hi = (2.0 * (start + extent) - 1.0) / side - 1.0
    return torch.minimum(torch.maximum(g, lo[:, None]), hi[:, None])


def _per_image(factors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) in the images' dtype, for broadcasting."""
    return factors.to(images.dtype).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``clamp(f * images + (1 - f) * other, 0, 1)`` per image, as torchvision's ``_blend``."""
    f = _per_image(factors, images)
    return images.mul(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights); 1-channel input is returned as is.

    Shape:
        images: (B, C, H, W), C in {1, 3}
        return: (B, 1, H, W)
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Multiplies each image by its factor and clamps to [0, 1] (torchvision semantics).

    Shape:
        images: (B, C, H, W), values in [0, 1]
        factors: (B,)
        return: (B, C, H, W)
    """
    return images.mul(_per_image(factors, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blends each image with the mean of its grayscale version (torchvision semantics).

    Shape:
        images: (B, C, H, W), values in [0, 1]
        factors: (B,)
        return: (B, C, H, W)
    """
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factors)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blends each image with its grayscale version; a no-op on 1-channel images (as torchvision).

    Shape:
        images: (B, C, H, W), values in [0, 1]
        factors: (B,)
        return: (B, C, H, W)
    """
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images), factors)


def adjust_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotates each image's hue by its shift (in turns) in HSV space; no-op on 1 channel.

    Equivalent to torchvision's ``adjust_hue`` (RGB -> HSV, h += shift mod 1, HSV -> RGB) but
    vectorised over per-image shifts. Saturation and value are untouched, so only the hue is
    computed (in sixths of a turn) and HSV -> RGB uses the branch-free form
    ``c_n = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h) mod 6``, with
    n = 5, 3, 1 for R, G, B. Images with a zero shift are returned unchanged (bit-exact).

    Shape:
        images: (B, 3, H, W), values in [0, 1]
        shifts: (B,), in [-0.5, 0.5]
        return: (B, 3, H, W)
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    # Elementwise max/min and arithmetic masks: on CPU, a reduction over the strided channel dim
    # and torch.where with full-size masks are several times slower than these.
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    r_max = (maxc == r).to(images.dtype)
    g_max = (maxc == g).to(images.dtype).mul_(1.0 - r_max)
    b_max = 1.0 - r_max - g_max
    num = r_max * (g - b) + g_max * (b - r) + b_max * (r - g)  # 0 where delta == 0
    h6 = num.div_(delta.clamp_min(torch.finfo(images.dtype).tiny))  # hue in sixths of a turn ...
    h6 = h6.add_(2.0 * g_max).add_(4.0 * b_max)
    h6 = h6.add_(6.0 * shifts.to(images.dtype).view(-1, 1, 1)).unsqueeze(1)  # ... shifted; (B, 1, H, W)
    # n = 5, 3, 1 for R, G, B; built on the device (no host-to-device copy, no CUDA sync).
    n = torch.arange(5.0, 0.0, -2.0, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = h6 + n  # (B, 3, H, W)
    k = k.sub_(torch.floor(k * (1.0 / 6.0)).mul_(6.0))  # k mod 6
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp
    return torch.where((shifts == 0).view(-1, 1, 1, 1), images, out)


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Inverts pixels ``>= threshold`` (torchvision semantics on [0, 1] images).

    Shape:
        images: (B, C, H, W)
        return: (B, C, H, W)
    """
    return torch.where(images >= threshold, 1.0 - images, images)


def blur_kernel_size(size: int, frac: float) -> int:
    """Odd Gaussian kernel side for a ``size`` px image, as the official SimCLR code.

    ``radius = int(frac * size) // 2``, kernel ``2 * radius + 1``: 23 at 224 px, 3 at 32 and
    28 px, 1 (no blur) below 20 px with the default 10 %.
    """
    return 2 * (int(frac * size + 1e-6) // 2) + 1


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blurs each image with its own Gaussian, separably, with reflect padding (as torchvision).

    The per-image 1-D kernels run as one grouped convolution over the (B·C) channels per axis.

    Args:
        images: float images.
        sigmas: standard deviation per image, in pixels.
        kernel_size: odd kernel side, smaller than twice the image side.

    Shape:
        images: (B, C, H, W)
        sigmas: (B,)
        return: (B, C, H, W)
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}.")
    if kernel_size == 1:
        return images
    b, c, height, width = images.shape
    radius = kernel_size // 2
    pos = torch.arange(kernel_size, device=images.device, dtype=images.dtype) - radius
    s = sigmas.to(images.dtype)[:, None]
    kernel = torch.exp(-(pos * pos) / (2.0 * s * s))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    weight = kernel.repeat_interleave(c, dim=0)  # (B*C, k), channel-major within each image
    x = F.pad(images.reshape(1, b * c, height, width), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, weight.view(b * c, 1, 1, kernel_size), groups=b * c)
    x = F.conv2d(x, weight.view(b * c, 1, kernel_size, 1), groups=b * c)
    return x.view(b, c, height, width)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` per channel.

    Shape:
        images: (B, C, H, W)
        mean, std: (C,)
        return: (B, C, H, W)
    """
    return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def apply_view(images: torch.Tensor, spec: ViewSpec, params: ViewParams, size: int) -> torch.Tensor:
    """Applies one view's ops with the given per-image parameters (no normalisation).

    Order: crop + resize (+ flip) -> brightness -> contrast -> saturation -> hue -> grayscale ->
    Gaussian blur -> solarize. Ops whose spec disables them are skipped entirely.

    Args:
        images: float images in [0, 1].
        spec: the view (which ops are enabled, blur kernel, solarize threshold).
        params: per-image parameters from :func:`sample_view_params`.
        size: output side.

    Shape:
        images: (B, C, H, W)
        return: (B, C, size, size), values in [0, 1]
    """
    x = crop_resize(images, params.boxes, size, params.flip if spec.flip_p > 0 else None)
    if spec.jitter_p > 0:
        # Deviation: fixed order b, c, s, h; torchvision's ColorJitter draws a random order per call.
        if spec.brightness > 0:
            x = adjust_brightness(x, params.brightness)
        if spec.contrast > 0:
            x = adjust_contrast(x, params.contrast)
        if spec.saturation > 0:
            x = adjust_saturation(x, params.saturation)
        if spec.hue > 0:
            x = adjust_hue(x, params.hue)
    if spec.grayscale_p > 0 and x.shape[1] == 3:
        x = torch.where(params.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
    if spec.blur_p > 0:
        k = blur_kernel_size(size, spec.blur_kernel_frac)
        if k > 1:
            x = torch.where(params.blur.view(-1, 1, 1, 1), gaussian_blur(x, params.sigma, k), x)
    if spec.solarize_p > 0:
        x = torch.where(params.solarize.view(-1, 1, 1, 1), solarize(x, spec.solarize_threshold), x)
    return x


# --------------------------------------------------------------------------------------------
# Views that share one pass
# --------------------------------------------------------------------------------------------


def _jitter_ops(spec: ViewSpec) -> tuple[bool, bool, bool, bool]:
    """Which of brightness, contrast, saturation, hue :func:`apply_view` runs for ``spec``."""
    strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
    on = tuple(spec.jitter_p > 0 and s > 0 for s in strengths)
    return on[0], on[1], on[2], on[3]


@dataclass
class _Group:
    """The views of one shared pass and what their ops must agree on."""

    size: int
    jitter: tuple[bool, bool, bool, bool]
    blur_kernel: int | None  # the kernel side of the views with blur_p > 0; None: no such view yet
    threshold: float | None  # the solarize threshold of the views with solarize_p > 0; idem
    members: list[int]

    def admits(self, spec: ViewSpec, size: int) -> bool:
        if size != self.size or _jitter_ops(spec) != self.jitter:
            return False
        kernel = blur_kernel_size(size, spec.blur_kernel_frac)
        if spec.blur_p > 0 and self.blur_kernel is not None and kernel != self.blur_kernel:
            return False
        return not (spec.solarize_p > 0 and self.threshold is not None and spec.solarize_threshold != self.threshold)

    def add(self, v: int, spec: ViewSpec) -> None:
        self.members.append(v)
        if spec.blur_p > 0:
            self.blur_kernel = blur_kernel_size(self.size, spec.blur_kernel_frac)
        if spec.solarize_p > 0:
            self.threshold = spec.solarize_threshold


def merge_groups(views: Sequence[ViewSpec], sizes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Partitions views into groups that :class:`BatchAugment` can run as one batch, bit-identically.

    :func:`apply_view` on the concatenation of a group's images and parameters gives each view's
    pixels exactly as the view alone when the group's views
        * have the same output side;
        * run the same colour jitter ops (brightness, contrast, saturation, hue each enabled,
          i.e. ``jitter_p > 0`` and its strength > 0, in all or none): an identity factor is not
          guaranteed to leave pixels unchanged (the clamp), so these ops cannot be unioned;
        * blur with one kernel side among the views with ``blur_p > 0``;
        * solarize at one threshold among the views with ``solarize_p > 0``.
    Flip, grayscale, blur and solarize are unioned: they are selected per image (``torch.where`` or,
    for the flip, a mirrored grid) and a view whose probability is 0 draws all-False masks, which
    pick the unchanged pixels. The blur's sigma range, the crop ranges and the jitter
    probabilities and strengths need not match: they only enter the drawn parameters.

    Views are taken in order, each joining the first group that admits it, so SimCLR's two views,
    and BYOL's asymmetric ones (blur p 1.0 / 0.1, solarize p 0 / 0.2), form one group, and a
    multi-crop recipe forms one group of global and one of local views.

    Args:
        views: the views' specs.
        sizes: each view's output side (:attr:`BatchAugment.view_sizes`).

    Returns:
        The groups as tuples of view indices, ascending within a group, groups ordered by their
        first view; every view is in exactly one.
    """
    if len(views) != len(sizes):
        raise ValueError(f"merge_groups needs one size per view, got {len(views)} views and {len(sizes)} sizes.")
    groups: list[_Group] = []
    for v, (spec, size) in enumerate(zip(views, sizes)):
        group = next((g for g in groups if g.admits(spec, size)), None)
        if group is None:
            group = _Group(size, _jitter_ops(spec), None, None, [])
            groups.append(group)
        group.add(v, spec)
    return tuple(tuple(g.members) for g in groups)


def _merged_spec(specs: Sequence[ViewSpec]) -> ViewSpec:
    """One spec whose :func:`apply_view` runs the ops of all of ``specs`` (a :func:`merge_groups` group)."""
    first = specs[0]
    blur = next((s for s in specs if s.blur_p > 0), first)
    sol = next((s for s in specs if s.solarize_p > 0), first)
    return replace(
        first,  # its jitter fields: the group's views agree on which jitter ops run
        flip_p=max(s.flip_p for s in specs),
        grayscale_p=max(s.grayscale_p for s in specs),
        blur_p=blur.blur_p,
        blur_kernel_frac=blur.blur_kernel_frac,
        solarize_p=sol.solarize_p,
        solarize_threshold=sol.solarize_threshold,
    )


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _check_uint8_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Expected a uint8 image batch (B, C, H, W), got {got}.")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Expected 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)}).")


def _stats(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) not in (1, 3) or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} needs 1 or 3 finite values (one per channel), got {values!r}.")
    return out


class BatchAugment:
    """Applies an :class:`AugmentRecipe` to a uint8 batch, on the batch's device.

    Each call draws fresh, independent parameters for every image and view from ``generator``;
    the same generator state gives the same views. The parameters are drawn view by view, in order,
    whichever path below runs the ops, so the random stream does not depend on it.

    Two ways to run the ops, with bit-identical views on CPU:
        * per view: each view's pipeline on its own batch; on CPU in cache-sized chunks of images.
        * merged: the views of each :func:`merge_groups` group (e.g. SimCLR's or BYOL's two views,
          a multi-crop recipe's global and its local views) as ONE batch (the images repeated per
          view, the parameters concatenated), then split back into views: half the kernel
          launches for two views, which dominate a GPU step's augmentation time at small images.

    Args:
        recipe: the views to produce.
        mean: per-channel normalisation mean (on the [0, 1] scale).
        std: per-channel normalisation std.
        image_size: the dataset's image side; views with ``size=None`` use it (× relative_size).
        merge_views: run the views merged (True) or per view (False); None: merged on every
            device but the CPU, where the chunked per-view path is the faster one.
        out_dtype: the views' floating dtype (e.g. ``torch.bfloat16`` for a bf16 model); the
            pipeline and the normalisation run in float32 and the result is converted once.
        channels_last: return the views in ``torch.channels_last`` memory format (for a
            convolutional model that runs channels-last), converted in the same single copy.

    Raises:
        ValueError: bad mean / std / image_size, or an ``out_dtype`` that is not floating point.

    Example:
        >>> aug = BatchAugment(get_augment_recipe("simclr-small"), (0.5,), (0.25,), 28)
        >>> g = torch.Generator().manual_seed(0)
        >>> v1, v2 = aug(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), g)
    """

    def __init__(self, recipe: AugmentRecipe, mean: Sequence[float], std: Sequence[float], image_size: int,
                 *, merge_views: bool | None = None, out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False) -> None:
        self.recipe = recipe
        self.mean = _stats(mean, "mean")
        self.std = _stats(std, "std")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"mean {mean!r} and std {std!r} need the same length and std > 0.")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
        if merge_views is not None and not isinstance(merge_views, bool):
            raise ValueError(f"merge_views must be True, False or None (auto), got {merge_views!r}.")
        if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
            raise ValueError(f"out_dtype must be a floating-point torch.dtype, got {out_dtype!r}.")
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be a bool, got {channels_last!r}.")
        self.image_size = image_size
        self.view_sizes: tuple[int, ...] = tuple(v.output_size(image_size) for v in recipe.views)
        self.merge_views = merge_views
        self.out_dtype = out_dtype
        self.channels_last = channels_last
        #: The views that share a pass on the merged path (:func:`merge_groups`).
        self.view_groups: tuple[tuple[int, ...], ...] = merge_groups(recipe.views, self.view_sizes)
        self._merged_specs = {g: _merged_spec([recipe.views[v] for v in g]) for g in self.view_groups if len(g) > 1}
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_views(self) -> int:
        """Views per image."""
        return len(self.recipe.views)

    def merges_on(self, device: torch.device) -> bool:
        """Whether calls on ``device`` take the merged path."""
        return self.merge_views if self.merge_views is not None else device.type != "cpu"

    @overload
    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 crop_sampler: CropSampler | None = None, *, return_params: Literal[False] = False,
                 view_images: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]: ...

    @overload
    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 crop_sampler: CropSampler | None = None, *, return_params: Literal[True],
                 view_images: Sequence[torch.Tensor] | None = None,
                 ) -> tuple[list[torch.Tensor], list[ViewParams]]: ...

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 crop_sampler: CropSampler | None = None, *, return_params: bool = False,
                 view_images: Sequence[torch.Tensor] | None = None,
                 ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[ViewParams]]:
        """Returns the views of ``images`` (and, with ``return_params``, each view's
        :class:`ViewParams`: its crop boxes and flips, for methods that match pixels across views).

        Args:
            images: uint8 batch on any device.
            generator: a ``torch.Generator`` on the same device as ``images``.
            crop_sampler: places every view's crop instead of RandomResizedCrop (ContrastiveCrop's
                :class:`~sslbench.benchmark.contrastive_crop.ContrastiveCropSampler`); None: the
                recipe's RandomResizedCrop.
            view_images: one uint8 batch per view, like ``images``, that view v is made from instead
                of ``images`` (background augmentation's per-view composites,
                :class:`~sslbench.benchmark.background.BackgroundAugment`); the draws are the same.

        Shape:
            images: (B, C, H, W), C in {1, 3}
            return: one (B, C, s_v, s_v) tensor per view, s_v = ``self.view_sizes[v]``, of dtype
            ``self.out_dtype`` (channels-last with ``self.channels_last``); on the merged path the
            views of a group are consecutive slices of one tensor.
        """
        _check_uint8_batch(images)
        device = images.device
        g_device = torch.device(generator.device)
        if g_device.type != device.type or (
            g_device.index is not None and device.index is not None and g_device.index != device.index
        ):
            raise ValueError(
                f"The generator is on {g_device} but the images are on {device}; create it with "
                f"torch.Generator(device=images.device).manual_seed(seed)."
            )
        b, c, height, width = images.shape
        if len(self.mean) != c:
            raise ValueError(f"mean/std have {len(self.mean)} values but the images have {c} channels.")
        if device not in self._stats_on:  # copied to the device once, not per call (a CUDA sync)
            self._stats_on[device] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        mean, std = self._stats_on[device]
        if view_images is not None and (len(view_images) != self.num_views or any(
                v.dtype != torch.uint8 or v.shape != images.shape or v.device != device
                for v in view_images)):
            raise ValueError(f"view_images needs {self.num_views} uint8 batches of shape "
                             f"{tuple(images.shape)} on {device}.")
        # All draws first, view by view as the ops never draw: the stream is the same on both paths.
        all_params = [sample_view_params(spec, b, height, width, generator, crop_sampler)  # whole batch
                      for spec in self.recipe.views]
        groups = self.view_groups if self.merges_on(device) else tuple((v,) for v in range(self.num_views))
        x = images.to(torch.float32).div_(255.0) if view_images is None else images
        views: list[torch.Tensor] = [x] * self.num_views  # placeholders, all replaced
        for group in groups:
            if len(group) == 1:
                spec, params = self.recipe.views[group[0]], all_params[group[0]]
                source = x if view_images is None else view_images[group[0]].to(torch.float32).div_(255.0)
            else:
                spec, params = self._merged_specs[group], ViewParams.cat([all_params[v] for v in group])
                if view_images is None:
                    source = x.repeat(len(group), 1, 1, 1)
                else:
                    source = torch.cat([view_images[v] for v in group]).to(torch.float32).div_(255.0)
            out = self._run(source, spec, params, self.view_sizes[group[0]], mean, std)
            for v, view in zip(group, out.split(b) if len(group) > 1 else (out,)):
                views[v] = view
        return (views, all_params) if return_params else views

    def _run(self, x: torch.Tensor, spec: ViewSpec, params: ViewParams, size: int,
             mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """``normalize(apply_view(x, ...))`` in float32, as ``out_dtype`` / channels-last; on CPU in
        chunks of images.

        Shape:
            x: (N, C, H, W) float32 in [0, 1]
            return: (N, C, size, size)
        """
        n, c, height, width = x.shape
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        chunk = n if x.device.type != "cpu" else max(8, CPU_CHUNK_VALUES // (c * max(size, height, width) ** 2))
        if chunk >= n:
            return normalize(apply_view(x, spec, params, size), mean, std).to(self.out_dtype, memory_format=layout)
        # On CPU, chunks whose temporaries stay in cache are several times faster than one
        # pass over the batch (the ops are memory-bound; e.g. hue 28 ms -> 6 ms for 512x3x32x32).
        out = torch.empty((n, c, size, size), dtype=self.out_dtype, device=x.device, memory_format=layout)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            out[rows] = normalize(apply_view(x[rows], spec, params.rows(rows), size), mean, std)
        return out

    def __repr__(self) -> str:
        return f"BatchAugment(recipe={self.recipe.name!r}, view_sizes={self.view_sizes})"


def to_float_normalized(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """Evaluation preprocessing: uint8 -> float32 in [0, 1] -> resize (optional) -> normalise.

    Args:
        images: uint8 batch.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std.
        size: output side; resized bilinearly with antialiasing only if it differs from H or W.

    Shape:
        images: (B, C, H, W)
        return: (B, C, size, size), or (B, C, H, W) when size is None
    """
    _check_uint8_batch(images)
    m, s = _stats(mean, "mean"), _stats(std, "std")
    if len(m) != images.shape[1] or len(s) != images.shape[1]:
        raise ValueError(f"mean/std need {images.shape[1]} values (one per channel), got {mean!r} / {std!r}.")
    x = images.to(torch.float32).div_(255.0)
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, torch.tensor(m, device=x.device), torch.tensor(s, device=x.device))


# --------------------------------------------------------------------------------------------
# Named recipes
# --------------------------------------------------------------------------------------------

# SimCLR App. A, colour strength s = 1: ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8.
_simclr = ViewSpec(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5,
                   jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, grayscale_p=0.2,
                   blur_p=0.5, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1)  # fmt: skip
# Colour strength s = 0.5, no blur (SimCLR App. B.9, CIFAR-10).
_simclr_small = replace(_simclr, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, blur_p=0.0)
_byol_1 = replace(_simclr, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=1.0, solarize_p=0.0)
_byol_2 = replace(_byol_1, blur_p=0.1, solarize_p=0.2, solarize_threshold=0.5)
_mocov2 = replace(_simclr_small, crop_scale=(0.2, 1.0), blur_p=0.5)
_crop_flip = ViewSpec(crop_scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)

register_augment_recipe(AugmentRecipe(
    "simclr", (_simclr, _simclr),
    "SimCLR (Chen et al., ICML 2020) App. A: RandomResizedCrop area 0.08-1, ratio 3/4-4/3, flip 0.5; "
    "colour strength s=1: ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2; Gaussian blur p=0.5, "
    "sigma 0.1-2.0, kernel 10 % of the side. Deviation: jitter order fixed (b, c, s, h).",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "simclr-small", (_simclr_small, _simclr_small),
    "SimCLR App. B.9 (CIFAR-10) and the official CIFAR recipe: as 'simclr' with colour strength "
    "s=0.5 -> ColorJitter(0.4, 0.4, 0.4, 0.1), no blur.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "byol", (_byol_1, _byol_2),
    "BYOL (Grill et al., NeurIPS 2020) Table 6, views T / T': crop 0.08-1 (p 1.0/1.0), flip 0.5/0.5, "
    "ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8/0.8, grayscale 0.2/0.2, blur 1.0/0.1 (sigma 0.1-2, kernel "
    "23 px at 224 = 10 %), solarize 0.0/0.2 (threshold 0.5). Deviation: jitter order fixed.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "byol-small", (replace(_byol_1, blur_p=0.0), replace(_byol_2, blur_p=0.0)),
    "BYOL Table 6 without the blur, as on small images (SimSiam App. D / SimCLR App. B.9 drop blur on "
    "CIFAR); solarize kept on view T'.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "mocov2", (_mocov2, _mocov2),
    "MoCo v2 (Chen et al., arXiv 2020) 'aug+' (--aug-plus): RandomResizedCrop 0.2-1, "
    "ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2, Gaussian blur sigma 0.1-2 p=0.5, flip. "
    "Deviation: the official code blurs with PIL (radius = sigma, no kernel size); here a 10 % kernel.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "mocov2-small", (replace(_mocov2, blur_p=0.0),) * 2,
    "MoCo v2 'aug+' without the blur, as the CIFAR recipes (e.g. ContrastiveCrop's) use.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "crop-only", (_crop_flip, _crop_flip),
    "Augmentation ablation 'crop + flip only' (BYOL Table 17 / SimCLR Fig. 5 row Crop): "
    "RandomResizedCrop 0.08-1 + flip 0.5, no colour, no blur.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "simclr-no-color", (replace(_simclr_small, jitter_p=0.0, grayscale_p=0.0),) * 2,
    "'simclr-small' without colour jitter and grayscale (the 'remove colour' ablation of BYOL "
    "Table 17 on the SimCLR CIFAR recipe).",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "linear-eval", (_crop_flip,),
    "Standard linear-probe training augmentation (MoCo main_lincls.py, SimCLR, BYOL): one "
    "RandomResizedCrop 0.08-1 + flip 0.5 view.",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "fmnist", (ViewSpec(crop_scale=(0.2, 1.0), flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4,
                        saturation=0.0, hue=0.0, grayscale_p=0.0),) * 2,
    "sslbench quick recipes on Fashion-MNIST (shared/reference/MEASURED.md prototype): "
    "RandomResizedCrop 0.2-1 (MoCo v2 / SimSiam CIFAR), flip 0.5, brightness and contrast +-0.4; "
    "jitter p=0.8 as in every paper recipe (the prototype's probability is not recorded). "
    "Grayscale images: no saturation, hue or grayscale; no blur (28 px).",
))  # fmt: skip
register_augment_recipe(AugmentRecipe(
    "fmnist-quick", tuple(replace(v, size=20) for v in get_augment_recipe("fmnist").views),
    "'fmnist' with the views resized to 20 px (evaluation stays at 28 px): on the 2-core CPU it "
    "halves the FLOPs per step at equal kNN accuracy per epoch (SimCLR, 12 epochs, kNN k=200: "
    "73.5 at 20 px vs 73.8 at 28 px), so the quick start affords twice the epochs.",
))  # fmt: skip
_global = replace(_simclr_small, crop_scale=(0.14, 1.0))
_local = replace(_global, crop_scale=(0.05, 0.14), relative_size=0.5)
register_augment_recipe(AugmentRecipe(
    "multicrop-small", (_global,) * 2 + (_local,) * 4,
    "Multi-crop (SwAV 2x224 scale 0.14-1 + 6x96 scale 0.05-0.14; DINO RN50 recipe) scaled down: "
    "2 global views at the dataset size (scale 0.14-1) + 4 local views at half the size "
    "(scale 0.05-0.14); colour as 'simclr-small', no blur (small images).",
))  # fmt: skip
