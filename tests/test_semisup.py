"""Semi-supervised fine-tuning: split files, the validation split, test-split hygiene, the
distillation loss against a naive implementation, and SSL beating random init at 1 %."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.benchmark.backbones import build_backbone
from sslbench.benchmark.datasets import load_dataset
from sslbench.benchmark.errors import ConfigError, DatasetError
from sslbench.protocols import semisup
from sslbench.protocols.semisup import distillation_loss, fine_tune, validation_split
from sslbench.protocols.spec import SemiSupSpec, get_protocol
from sslbench.protocols.subsets import (
    LabelledSubset,
    balanced_subset,
    load_subset,
    save_subset,
    subset_from_file_names,
)

# A tiny, fast configuration: 2 labelled images per class, 2 epochs, 2 learning rates.
TINY = SemiSupSpec(name="semisup-tiny", version=1, fraction=None, per_class=2, val_per_class=5,
                   lrs=(0.01, 0.1), epochs=2, batch_size=8)


@pytest.fixture(scope="module")
def data():
    """600 training images of the embedded data (name kept: subsets are for this split) and 200 test."""
    train = load_dataset("fashion-mnist-mini", "train")
    test = load_dataset("fashion-mnist-mini", "test")
    return train.subset(torch.arange(600)), test.subset(torch.arange(200))


def random_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("small-cnn", 1, 28)[0]


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Split files and the validation split


@pytest.mark.parametrize("kwargs, per_class", [({"fraction": 0.01}, 10), ({"fraction": 0.1}, 100),
                                               ({"per_class": 25}, 25)])
def test_split_files_are_deterministic_and_balanced(tmp_path, kwargs, per_class):
    labels = load_dataset("fashion-mnist-mini", "train").labels.numpy()
    a = balanced_subset(labels, "fashion-mnist-mini", seed=0, **kwargs)
    b = balanced_subset(labels, "fashion-mnist-mini", seed=0, **kwargs)
    pa, pb = save_subset(a, tmp_path / "a.json"), save_subset(b, tmp_path / "b.json")
    assert pa.read_bytes() == pb.read_bytes() and a.sha256 == b.sha256
    assert np.bincount(labels[list(a.indices)], minlength=10).tolist() == [per_class] * 10
    other = balanced_subset(labels, "fashion-mnist-mini", seed=1, **kwargs)
    assert other.sha256 != a.sha256  # the seed matters, and the hash sees it


def test_validation_split_is_disjoint_balanced_and_seeded(data):
    train, _ = data
    subset = balanced_subset(train.labels.numpy(), "fashion-mnist-mini", per_class=3, seed=0)
    val = validation_split(train.labels, subset.indices, per_class=7, seed=0)
    assert not set(val.tolist()) & set(subset.indices)
    assert 0 <= int(val.min()) and int(val.max()) < len(train)  # training positions only
    assert torch.bincount(train.labels[val], minlength=10).tolist() == [7] * 10
    assert torch.equal(val, validation_split(train.labels, subset.indices, per_class=7, seed=0))
    assert not torch.equal(val, validation_split(train.labels, subset.indices, per_class=7, seed=1))
    with pytest.raises(ConfigError, match="fewer than the val_per_class=60"):
        validation_split(train.labels, subset.indices, per_class=60, seed=0)


# ---------------------------------------------------------------------------------------------
# The distillation loss


def naive_distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR v2 Eq. 2 with explicit loops in float64, averaged over the batch."""
    total = torch.zeros((), dtype=torch.float64)
    for s, t in zip(student.double(), teacher.double()):
        p_t = [torch.exp(v / tau) / torch.exp(t / tau).sum() for v in t]
        log_norm = torch.log(torch.exp(s / tau).sum())
        total = total - sum(p * (v / tau - log_norm) for p, v in zip(p_t, s))
    return total / student.shape[0]


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_distillation_loss_matches_naive_and_its_gradient(tau):
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    teacher = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    loss = distillation_loss(student, teacher, tau)
    assert torch.allclose(loss, naive_distillation(student, teacher, tau), atol=1e-12)
    loss.backward()
    expected = (torch.softmax(student / tau, 1) - torch.softmax(teacher / tau, 1)) / (tau * student.shape[0])
    assert torch.allclose(student.grad, expected.detach(), atol=1e-12)
    assert teacher.grad is None  # the teacher is a constant target
    # The minimum over the student is the teacher's entropy, reached at student == teacher.
    p = torch.softmax(teacher.detach() / tau, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(distillation_loss(teacher.detach(), teacher.detach(), tau), entropy, atol=1e-12)
    assert loss > entropy


def test_distillation_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


# ---------------------------------------------------------------------------------------------
# The protocol on a tiny configuration


class SplitRead(Exception):
    """Raised by a guarded test split at its first read."""


class GuardedTest:
    """A test split that raises at its first read (any attribute, or len())."""

    def __len__(self) -> int:
        raise SplitRead

    def __getattr__(self, name: str) -> object:
        raise SplitRead(name)


def test_test_split_is_read_only_after_every_choice(data, monkeypatch):
    """The first read of the test split comes after all fine-tuning, validation and distillation."""
    train, _ = data
    events: list[str] = []
    real_train, real_correct = semisup._train, semisup._correct

    def logged_train(model, data, **kwargs):
        events.append(f"train:{len(data)}")
        return real_train(model, data, **kwargs)

    def logged_correct(model, data, *args):
        events.append(f"score:{len(data)}")
        return real_correct(model, data, *args)

    monkeypatch.setattr(semisup, "_train", logged_train)
    monkeypatch.setattr(semisup, "_correct", logged_correct)
    spec = dataclasses.replace(TINY, distill_epochs=1)
    with pytest.raises(SplitRead):
        fine_tune(random_encoder(), train, GuardedTest(), spec, num_classes=10, progress=False)
    # two lrs: train on 20 labelled, score 50 val; then distil on all 600 and score val.
    assert events == ["train:20", "score:50", "train:20", "score:50", "train:600", "score:50"]


def test_choice_ignores_the_test_split_and_results_are_reproducible(data):
    train, test = data
    flipped = dataclasses.replace(test, labels=(test.labels + 1) % 10)
    a = fine_tune(random_encoder(), train, test, TINY, num_classes=10, progress=False)
    b = fine_tune(random_encoder(), train, flipped, TINY, num_classes=10, progress=False)
    for key in ("lr", "grid", "subset_sha256"):
        assert a.params[key] == b.params[key]
    assert a.metrics["val_top1"] == b.metrics["val_top1"]
    assert a.metrics["top1"] != b.metrics["top1"]  # the test split was scored, after the choice
    assert set(a.metrics) == {"top1", "top5", "val_top1"}
    grid = json.loads(a.params["grid"])
    assert set(grid) == {"0.01", "0.1"} and grid[f"{a.params['lr']:g}"] == a.metrics["val_top1"]
    assert a.params["num_labelled"] == 20 and a.params["num_val"] == 50 and a.params["num_test"] == 200
    assert a.params["feature_dim"] == 256


def test_subset_is_recorded_and_a_given_subset_is_used(data, tmp_path):
    train, test = data
    drawn = balanced_subset(train.labels.numpy(), "fashion-mnist-mini", per_class=2, seed=0)
    out = fine_tune(random_encoder(), train, test, TINY, num_classes=10, progress=False)
    assert out.params["subset_sha256"] == drawn.sha256 and out.params["subset_spec"] == "2-per-class"
    path = tmp_path / "subset.json"
    path.write_text(out.artifacts["labelled_subset.json"])
    assert load_subset(path, dataset="fashion-mnist-mini", num_samples=600) == drawn

    # An ImageNet-style list of file names, given as the subset.
    names = [f"train/{int(c)}/{i:05d}.png" for i, c in enumerate(train.labels)]
    listing = tmp_path / "1percent.txt"
    chosen = [int(np.flatnonzero(train.labels.numpy() == c)[0]) for c in range(10)]
    listing.write_text("".join(f"{names[i].split('/')[-1]}\n" for i in chosen))
    listed = subset_from_file_names(listing, names, "fashion-mnist-mini")
    out = fine_tune(random_encoder(), train, test, TINY, num_classes=10, progress=False, subset=listed)
    assert out.params["subset_sha256"] == listed.sha256 and out.params["num_labelled"] == 10
    assert out.params["subset_spec"] == "1percent.txt"


def test_subsets_of_image_folders_decode_only_the_chosen_files():
    from sslbench.benchmark.datasets import DatasetInfo, FolderDataset

    info = DatasetInfo("folder", 32, 3, 2, (0.5,) * 3, (0.25,) * 3, False, "test")
    folder = FolderDataset([(f"/data/{c}/{i}.png", c) for i in range(6) for c in (0, 1)], ("a", "b"), info,
                           "train", num_workers=0)
    part = semisup._take(folder, torch.tensor([1, 4, 11]))
    assert part.samples == [("/data/1/0.png", 1), ("/data/0/2.png", 0), ("/data/1/5.png", 1)]
    assert part.labels.tolist() == [1, 0, 1] and part.info is info and part.classes == ("a", "b")


def test_subset_for_another_dataset_is_a_clear_error(data):
    train, test = data
    other = LabelledSubset("cifar10", 50000, (0, 1, 2), "1%", 0)
    with pytest.raises(DatasetError, match="is for 'cifar10' .50000 training images., not 'fashion-mnist-mini' .600."):
        fine_tune(random_encoder(), train, test, TINY, num_classes=10, progress=False, subset=other)
    with pytest.raises(ConfigError, match="not a SemiSupSpec"):
        fine_tune(random_encoder(), train, test, get_protocol("linear"), num_classes=10, progress=False)
    with pytest.raises(ConfigError, match="labels lie outside"):
        fine_tune(random_encoder(), train, test, TINY, num_classes=5, progress=False)


@pytest.mark.parametrize("student", ["pretrained", "random"])
def test_encoder_is_unchanged_and_distillation_reports_teacher_and_student(data, student):
    train, test = data
    encoder = random_encoder().train()
    before = state(encoder)
    spec = dataclasses.replace(TINY, distill_epochs=1, distill_student=student)
    out = fine_tune(encoder, train, test, spec, num_classes=10, progress=False)
    after = encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    assert {"top1", "top5", "teacher_top1", "teacher_top5", "val_top1", "student_val_top1"} <= set(out.metrics)
    assert all(0 <= v <= 100 for v in out.metrics.values())


def test_random_student_reinitialisation_is_seeded_and_leaves_the_global_rng():
    a, b = random_encoder(), random_encoder(seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    semisup._reinitialise(a, seed=7)
    semisup._reinitialise(b, seed=7)
    assert torch.equal(torch.rand(3), expected)  # global RNG state restored
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0][0].weight, random_encoder()[0][0].weight)


def test_diverging_learning_rates_lose_the_choice(data):
    train, test = data
    spec = dataclasses.replace(TINY, lrs=(0.01, 1e6))
    out = fine_tune(random_encoder(), train, test, spec, num_classes=10, progress=False)
    assert out.params["lr"] == 0.01 and json.loads(out.params["diverged_lrs"]) == [1e6]
    with pytest.raises(ConfigError, match="diverged at every lr"):
        fine_tune(random_encoder(), train, test, dataclasses.replace(TINY, lrs=(1e6,)), num_classes=10,
                  progress=False)


# ---------------------------------------------------------------------------------------------
# End to end: an SSL encoder beats random init at 1 %


@pytest.mark.slow
def test_ssl_beats_random_init_at_one_percent(simclr_checkpoint):
    from sslbench.benchmark.engine import load_encoder

    train = load_dataset("fashion-mnist-mini", "train")
    test = load_dataset("fashion-mnist-mini", "test")
    spec = get_protocol("semisup-1pct")
    assert isinstance(spec, SemiSupSpec)
    ssl = fine_tune(load_encoder(simclr_checkpoint)[0], train, test, spec, num_classes=10, progress=False)
    rand = fine_tune(random_encoder(), train, test, spec, num_classes=10, progress=False)
    assert ssl.params["num_labelled"] == 100 and ssl.params["subset_sha256"] == rand.params["subset_sha256"]
    assert ssl.metrics["top1"] > rand.metrics["top1"], (ssl.metrics, rand.metrics)
