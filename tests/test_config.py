"""Configs: strict overrides, validation, hashing, derived values, recipes."""

import math

import pytest

from sslbench.benchmark.config import Config, OptimConfig, config_from_dict, derive, scaled_lr
from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.benchmark.recipes import get_recipe, list_recipes, resolve
from sslbench.benchmark.schedules import cosine_momentum, warmup_cosine


def test_overrides_are_typed_and_applied():
    cfg = resolve("simclr-quick", ["optim.base_lr=0.3", "data.batch_size=128", "method.temperature=0.1",
                                   "train.epochs=3", "data.image_size=none"])
    assert cfg.optim.base_lr == 0.3 and isinstance(cfg.data.batch_size, int) and cfg.data.batch_size == 128
    assert cfg.method_args["temperature"] == 0.1 and cfg.train.epochs == 3 and cfg.data.image_size is None
    assert cfg.recipe == "simclr-quick"


@pytest.mark.parametrize("override, fragment", [
    ("optim.lr=0.1", "Unknown config key 'optim.lr'"),
    ("method.tau=0.1", "Unknown key 'method.tau'"),
    ("data.batch_size=12.5", "must be an integer"),
    ("train.epochs=many", "must be an integer"),
    ("optim.name=adam", "optim.name='adam' is invalid"),
    ("optim.base_lr=-1", "optim.base_lr"),
    ("method.temperature=0", "Invalid method settings"),
    ("data.download=maybe", "true or false"),
    ("nonsense", "not of the form key=value"),
])
def test_bad_overrides_raise_clear_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        resolve("simclr-quick", [override])


def test_switching_method_validates_against_the_new_method():
    cfg = resolve("simclr-quick", ["method=byol"])
    assert cfg.method == "byol" and "base_momentum" in cfg.method_args
    with pytest.raises(UnknownNameError, match="Valid methods"):
        resolve("simclr-quick", ["method=nope"])


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        get_recipe("simclr-quik")
    assert "simclr-quick" in str(e.value) and "Did you mean" in str(e.value)


def test_every_recipe_resolves_and_cites_sources():
    for name in list_recipes():
        cfg = resolve(name)
        assert cfg.recipe == name and get_recipe(name).sources


def test_hash_ignores_paths_and_device_but_not_hyperparameters():
    a = resolve("simclr-quick")
    assert a.hash() == resolve("simclr-quick", ["data.data_dir=/elsewhere", "train.device=cpu",
                                                "data.num_workers=7"]).hash()
    assert a.hash() != resolve("simclr-quick", ["method.temperature=0.3"]).hash()
    assert a.hash() != resolve("simclr-quick", ["train.seed=1"]).hash()
    assert config_from_dict(a.to_dict()) == a


def test_lr_scaling_and_derived_values():
    assert scaled_lr(OptimConfig(base_lr=0.3, lr_scaling="linear"), 4096) == pytest.approx(4.8)
    assert scaled_lr(OptimConfig(base_lr=1.2, lr_scaling="sqrt"), 4096) == pytest.approx(0.075 * math.sqrt(4096))
    assert scaled_lr(OptimConfig(base_lr=0.1, lr_scaling="none"), 4096) == 0.1
    cfg = resolve("simclr-quick", ["data.batch_size=128", "optim.warmup_epochs=2", "train.epochs=10"])
    d = derive(cfg, 1000)
    assert (d.steps_per_epoch, d.total_steps, d.warmup_steps) == (7, 70, 14)
    assert d.lr == pytest.approx(1e-3 * 128 / 256)
    with pytest.raises(ConfigError, match="larger than the training split"):
        derive(cfg, 100)


def test_warmup_cosine_schedule():
    vals = [warmup_cosine(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    assert vals[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_cosine_momentum_matches_byol_formula():
    for k, K in [(0, 100), (25, 100), (100, 100)]:
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / K) + 1) / 2
        assert cosine_momentum(k, K, 0.99) == pytest.approx(expected)
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_config_requires_known_optimizer_fields():
    with pytest.raises(ConfigError):
        config_from_dict({"method": "simclr"})
    assert isinstance(resolve("byol-quick"), Config)
