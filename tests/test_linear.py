"""Tests of the linear probe, the protocol specs, feature extraction and ``evaluate``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.benchmark.errors import ConfigError, UnknownNameError
from sslbench.protocols import (
    DEFAULT_PROTOCOLS,
    KNNSpec,
    LinearSpec,
    ProtocolResult,
    assert_frozen,
    evaluate,
    extract_features,
    get_protocol,
    linear_probe_augmented,
    linear_probe_features,
    list_protocols,
    register_protocol,
)
from sslbench.protocols import linear as linear_mod
from sslbench.protocols.linear import LinearGrid, choose_hyperparameters, snapshot_state, stratified_split
from sslbench.protocols.spec import spec_from_dict

# --------------------------------------------------------------------------------------------
# Stand-ins for sslbench.benchmark.datasets / augment (the protocols only need this interface).


@dataclass(frozen=True)
class TinyInfo:
    name: str = "tiny"
    image_size: int = 8
    channels: int = 1
    num_classes: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)


class TinyDataset:
    """In-memory uint8 images with ``.batches`` yielding (images, labels, indices)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "tiny") -> None:
        self.images, self.labels = images, labels
        self.info = TinyInfo(name=name, num_classes=int(labels.max()) + 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batches(self, batch_size, shuffle=False, generator=None, drop_last=False):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield SimpleNamespace(images=self.images[idx], labels=self.labels[idx], indices=idx)


def tiny_images(n: int, seed: int, num_classes: int = 3) -> TinyDataset:
    """Class c has mean brightness ~ (c + 1) / (num_classes + 1) plus noise (learnable from pixels)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    base = (labels.float() + 1) / (num_classes + 1) * 255
    noise = torch.randn(n, 1, 8, 8, generator=g) * 30
    images = (base[:, None, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return TinyDataset(images, labels)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.5) / 0.25


def flip_augment(images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    x = preprocess(images)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return [torch.where(flip[:, None, None, None], x.flip(-1), x)]


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def blobs(n: int, dim: int, num_classes: int, seed: int, sep: float = 6.0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1000)) * sep
    labels = torch.arange(n) % num_classes
    return centres[labels] + torch.randn(n, dim, generator=g), labels


SMALL = LinearSpec(name="small", version=1, epochs=10, batch_size=256)

# --------------------------------------------------------------------------------------------
# Linear probe on features


def test_separable_blobs_reach_near_100_percent():
    x, y = blobs(600, 16, 5, seed=0)
    xt, yt = blobs(300, 16, 5, seed=1)
    res = linear_probe_features(x, y, xt, yt, num_classes=5, spec=get_protocol("linear"))
    assert res.top1 >= 99.0 and res.top5 == 100.0
    assert res.val_top1 >= 98.0
    assert res.lr in get_protocol("linear").lrs and res.weight_decay in get_protocol("linear").weight_decays


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(1000, 32, generator=g), torch.randn(1000, 32, generator=g)
    y, yt = torch.randint(0, 10, (1000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    res = linear_probe_features(x, y, xt, yt, num_classes=10, spec=SMALL)
    assert 5.0 <= res.top1 <= 15.0  # chance 10 %, std ≈ 1 point
    assert 30.0 <= res.top5 <= 70.0
    assert 2.0 <= res.val_top1 <= 20.0


def test_stratified_split_is_stratified_disjoint_and_seeded():
    labels = torch.cat([torch.full((100,), 0), torch.full((50,), 1), torch.full((30,), 2), torch.tensor([3])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(torch.sort(torch.cat([fit, val])).values, torch.arange(len(labels)))  # disjoint, complete
    assert torch.bincount(labels[val], minlength=4).tolist() == [20, 10, 6, 0]  # singleton class stays in fit
    fit2, val2 = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(fit, fit2) and torch.equal(val, val2)
    _, val3 = stratified_split(labels, 0.2, seed=1)
    assert not torch.equal(val, val3) and torch.bincount(labels[val3], minlength=4).tolist() == [20, 10, 6, 0]


def test_grid_is_fit_on_the_fit_part_only_and_final_on_all_train(monkeypatch):
    calls = []
    real = linear_mod._fit_features

    def spy(x, y, num_classes, configs, spec, bar):
        calls.append((x.clone(), y.clone(), list(configs)))
        return real(x, y, num_classes, configs, spec, bar)

    monkeypatch.setattr(linear_mod, "_fit_features", spy)
    x, y = blobs(200, 4, 4, seed=0)
    x[:, 0] = torch.arange(200).float()  # a marker column: standardised, it still identifies the row
    xt, yt = blobs(40, 4, 4, seed=1)
    res = linear_probe_features(x, y, xt, yt, num_classes=4, spec=SMALL)
    fit_idx, val_idx = stratified_split(y, SMALL.val_fraction, SMALL.seed)
    assert len(calls) == 2
    (x_grid, y_grid, configs), (x_final, y_final, final_configs) = calls
    rows = fit_idx.float()
    torch.testing.assert_close(x_grid[:, 0], (rows - rows.mean()) / rows.std())  # exactly the fit rows
    assert torch.equal(y_grid, y[fit_idx]) and len(configs) == len(SMALL.lrs) * len(SMALL.weight_decays)
    rows = torch.arange(200).float()
    torch.testing.assert_close(x_final[:, 0], (rows - rows.mean()) / rows.std())  # the full train split
    assert torch.equal(y_final, y) and final_configs == [(res.lr, res.weight_decay)]
    assert all(v * len(val_idx) / 100 == round(v * len(val_idx) / 100) for v in res.grid.values())  # scored on val


def test_choice_never_depends_on_test_data():
    x, y = blobs(400, 8, 4, seed=0, sep=0.7)  # overlapping: grid points differ on val
    xt, yt = blobs(200, 8, 4, seed=1, sep=0.7)
    ref = linear_probe_features(x, y, xt, yt, num_classes=4, spec=SMALL)
    shuffled = linear_probe_features(x, y, xt, yt[torch.randperm(200, generator=torch.Generator().manual_seed(0))],
                                     num_classes=4, spec=SMALL)
    poisoned = linear_probe_features(x, y, torch.full_like(xt, float("nan")), yt, num_classes=4, spec=SMALL)
    for other in (shuffled, poisoned):
        assert (other.lr, other.weight_decay, other.val_top1, other.grid) == (
            ref.lr, ref.weight_decay, ref.val_top1, ref.grid)
    assert len(set(ref.grid.values())) > 1  # the choice was not trivial
    assert shuffled.top1 != ref.top1  # ... while the test score did look at the test labels


def test_grid_choice_picks_best_val_score():
    x, y = blobs(400, 8, 4, seed=0)
    xt, yt = blobs(100, 8, 4, seed=1)
    # lr 1e-7 cannot move the random init in 10 epochs; lr 0.1 separates the blobs.
    spec = dataclasses.replace(SMALL, lrs=(1e-7, 0.1), weight_decays=(0.0,))
    res = linear_probe_features(x, y, xt, yt, num_classes=4, spec=spec)
    assert res.grid["lr=0.1,wd=0"] > res.grid["lr=1e-07,wd=0"] + 30
    assert (res.lr, res.weight_decay) == (0.1, 0.0)
    assert res.val_top1 == res.grid["lr=0.1,wd=0"] == max(res.grid.values())


def test_grid_choice_follows_the_scorer(monkeypatch):
    # Script the validation scores: the probe must pick the one the scorer ranks best.
    spec = dataclasses.replace(SMALL, lrs=(0.01, 0.1), weight_decays=(0.0, 0.01), epochs=1)
    scripted = {(0.01, 0.0): 3, (0.01, 0.01): 9, (0.1, 0.0): 5, (0.1, 0.01): 1}
    real_correct = LinearGrid.correct

    def fake_correct(self, x, y, ks=(1,), chunk_size=4096):
        if self.num_heads == 1:  # the final classifier: score for real
            return real_correct(self, x, y, ks, chunk_size)
        configs = [(lr, wd) for lr in spec.lrs for wd in spec.weight_decays]
        return [{1: scripted[c]} for c in configs]

    monkeypatch.setattr(LinearGrid, "correct", fake_correct)
    x, y = blobs(200, 8, 4, seed=0)
    res = linear_probe_features(x, y, x, y, num_classes=4, spec=spec)
    assert (res.lr, res.weight_decay) == (0.01, 0.01)


def test_choose_hyperparameters_tie_breaking():
    assert choose_hyperparameters({(0.1, 0.0): 5, (0.01, 0.0): 7, (0.001, 0.1): 6}) == (0.01, 0.0)
    # Ties: smaller lr first, then larger weight decay; independent of the dict order.
    tied = {(0.1, 0.0): 7, (0.01, 0.0): 7, (0.01, 0.001): 7, (0.001, 0.0): 2}
    assert choose_hyperparameters(tied) == (0.01, 0.001)
    assert choose_hyperparameters(dict(reversed(list(tied.items())))) == (0.01, 0.001)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_linear_grid_matches_torch_optim(optimizer):
    """Each head of the batched grid follows torch.optim (L2 decay on the weight only)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 7, generator=g), torch.randint(0, 4, (64,), generator=g)
    lrs, wds = [0.05, 0.2], [0.0, 0.3]
    grid = LinearGrid(7, 4, lrs, wds, optimizer=optimizer, seed=3)
    ref = []
    for head in range(2):
        w = grid.weight[:, :, head].clone().requires_grad_()
        b = grid.bias[:, head].clone().requires_grad_()
        groups = [{"params": [w], "weight_decay": wds[head]}, {"params": [b], "weight_decay": 0.0}]
        opt = (torch.optim.SGD(groups, lr=lrs[head], momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(groups, lr=lrs[head]))
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(x @ w + b, y).backward()
            opt.step()
        ref.append((w.detach(), b.detach()))
    for _ in range(4):
        grid.step(x, y, lr_factor=1.0)
    for head in range(2):
        torch.testing.assert_close(grid.weight[:, :, head], ref[head][0])
        torch.testing.assert_close(grid.bias[:, head], ref[head][1])


def test_linear_probe_features_rejects_augmented_spec():
    x, y = blobs(50, 4, 2, seed=0)
    with pytest.raises(ConfigError):
        linear_probe_features(x, y, x, y, num_classes=2, spec=get_protocol("linear-augmented"))


# --------------------------------------------------------------------------------------------
# Frozen encoder: extraction, augmented probe, bit-identity


def test_extract_features_order_subset_and_modes():
    data = tiny_images(50, seed=0)
    enc = tiny_encoder().train()
    enc[1].eval()  # a deliberately mixed mode must survive
    before = snapshot_state(enc)
    feats, labels = extract_features(enc, data, batch_size=16, preprocess=preprocess)
    assert feats.shape == (50, 16) and feats.dtype == torch.float32 and torch.equal(labels, data.labels)
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, enc(preprocess(data.images)))
    enc.train()
    enc[1].eval()
    mask = torch.arange(50) % 3 == 0
    sub, sub_labels = extract_features(enc, data, batch_size=7, preprocess=preprocess, subset=mask)
    torch.testing.assert_close(sub, feats[mask])
    assert torch.equal(sub_labels, data.labels[mask])
    assert enc.training and not enc[1].training and enc[4].training
    assert_frozen(before, enc)  # eval mode: BatchNorm running stats untouched


class FormatSpy(nn.Module):
    """Records the memory format of every (3-channel) input and the autocast state, then runs
    ``body`` on the channel mean."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.stride(1) == 1 and not x.is_contiguous()
        self.seen.append((channels_last, torch.is_autocast_enabled("cpu")))
        return self.body(x.mean(dim=1, keepdim=True))


def test_extract_features_precision_memory_format_and_output_device():
    from sslbench.protocols.features import default_extract_batch_size, resolve_precision

    gray = tiny_images(50, seed=0)
    data = TinyDataset(gray.images.repeat(1, 3, 1, 1), gray.labels)  # channels_last is a no-op on 1 channel
    enc = FormatSpy(tiny_encoder())
    ref, ref_labels = extract_features(enc, data, batch_size=16, preprocess=preprocess)
    assert enc.seen == [(False, False)] * 4  # CPU default: fp32, NCHW, as before
    enc.seen.clear()
    bf16, labels = extract_features(enc, data, batch_size=16, preprocess=preprocess, precision="bf16",
                                    channels_last=True, output_device=None)
    assert enc.seen == [(True, True)] * 4
    assert bf16.dtype == torch.float32 and bf16.device.type == "cpu" and torch.equal(labels, ref_labels)
    torch.testing.assert_close(bf16, ref, rtol=0.05, atol=0.05)  # bf16 keeps ~3 significant digits
    assert not torch.equal(bf16, ref)
    enc.seen.clear()
    cl, _ = extract_features(enc, data, batch_size=16, preprocess=preprocess, precision="fp32", channels_last=True)
    assert enc.seen == [(True, False)] * 4
    torch.testing.assert_close(cl, ref)
    # "auto" is fp32 on the CPU (bit-identical), bf16 on CUDA; the defaults a GPU would get
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) in ("bf16", "fp32")  # fp32 on a GPU without bf16
    assert default_extract_batch_size("cpu") == 512 and default_extract_batch_size("cuda") == 1024
    with pytest.raises(ValueError, match="precision"):
        extract_features(enc, data, preprocess=preprocess, precision="fp16")


def test_extract_features_reads_nothing_back_per_batch(monkeypatch):
    """Without a subset the loop never waits for the device (on CUDA each of these calls would)."""
    data = tiny_images(50, seed=0)
    enc = tiny_encoder()
    want, want_labels = extract_features(enc, data, batch_size=16, preprocess=preprocess)
    reads: list[str] = []
    for name in ("cpu", "item", "tolist", "numpy", "__int__", "__bool__", "__float__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _real=real, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    feats, labels = extract_features(enc, data, batch_size=16, preprocess=preprocess)
    monkeypatch.undo()
    assert reads == []
    assert torch.equal(feats, want) and torch.equal(labels, want_labels)


def test_evaluate_records_the_feature_precision():
    train, test = tiny_images(60, seed=0), tiny_images(30, seed=1)
    enc = tiny_encoder()
    specs = [FAST_SPECS[0], get_protocol("linear"), FAST_SPECS[-1]]
    fp32 = evaluate(enc, train, test, specs, progress=False, preprocess=preprocess, augment=flip_augment)
    assert [r.params["feature_precision"] for r in fp32] == ["fp32"] * 3  # "auto" on the CPU
    bf16 = evaluate(enc, train, test, specs, progress=False, preprocess=preprocess, augment=flip_augment,
                    precision="bf16")
    assert [r.params["feature_precision"] for r in bf16] == ["bf16"] * 3
    for a, b in zip(fp32, bf16):
        assert a.spec.to_dict() == b.spec.to_dict()  # the spec (and its stored JSON) is unchanged
        assert abs(a.metrics["top1"] - b.metrics["top1"]) <= 20.0


def test_linear_probe_augmented_leaves_encoder_bit_identical():
    train, test = tiny_images(120, seed=0), tiny_images(60, seed=1)
    enc = tiny_encoder().train()  # left in train mode on purpose: the probe must use eval mode
    before = snapshot_state(enc)
    grads = [p.requires_grad for p in enc.parameters()]
    spec = dataclasses.replace(get_protocol("linear-augmented"), epochs=3, batch_size=32, lrs=(0.03, 0.3),
                               weight_decays=(0.0, 1e-3))
    res = linear_probe_augmented(enc, train, test, spec=spec, progress=False, preprocess=preprocess,
                                 augment=flip_augment)
    assert_frozen(before, enc)
    assert enc.training and [p.requires_grad for p in enc.parameters()] == grads
    assert set(res.grid) == {"lr=0.03,wd=0", "lr=0.03,wd=0.001", "lr=0.3,wd=0", "lr=0.3,wd=0.001"}
    assert res.top5 is None and res.top1 > 50.0  # 3 classes separable by brightness; chance 33 %
    again = linear_probe_augmented(enc, train, test, spec=spec, progress=False, preprocess=preprocess,
                                   augment=flip_augment)
    assert again == res  # seeded: crops, shuffling, init


def test_linear_probe_augmented_with_real_augmentation():
    augment = pytest.importorskip("sslbench.benchmark.augment")
    train, test = tiny_images(60, seed=0), tiny_images(30, seed=1)
    enc = tiny_encoder()
    before = snapshot_state(enc)
    spec = dataclasses.replace(get_protocol("linear-augmented"), epochs=2, batch_size=32, lrs=(0.1,),
                               weight_decays=(0.0,))
    res = linear_probe_augmented(enc, train, test, spec=spec, progress=False)
    assert_frozen(before, enc)
    assert 0.0 <= res.top1 <= 100.0
    assert augment.get_augment_recipe("linear-eval") is not None


def test_assert_frozen_detects_parameter_and_buffer_changes():
    enc = tiny_encoder()
    before = snapshot_state(enc)
    assert_frozen(before, enc)
    with torch.no_grad():
        enc[0].weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(RuntimeError, match=r"0\.weight"):
        assert_frozen(before, enc)
    enc = tiny_encoder()
    before = snapshot_state(enc)
    enc[4].running_var[3] = torch.nextafter(enc[4].running_var[3], torch.tensor(2.0))  # one ulp
    with pytest.raises(RuntimeError, match=r"4\.running_var"):
        assert_frozen(before, enc)
    enc = tiny_encoder()
    before = snapshot_state(enc)
    enc(preprocess(tiny_images(8, seed=0).images))  # a train-mode forward updates BN statistics
    with pytest.raises(RuntimeError, match="running_mean"):
        assert_frozen(before, enc)


# --------------------------------------------------------------------------------------------
# evaluate()


FAST_SPECS = (
    get_protocol("knn-k20-t0.07"),
    KNNSpec(name="knn-test-k500", version=1, k=500, temperature=0.1),
    dataclasses.replace(get_protocol("linear"), epochs=5),
    dataclasses.replace(get_protocol("linear-augmented"), epochs=2, batch_size=32, lrs=(0.1,), weight_decays=(0.0,)),
)


def test_evaluate_runs_every_spec_and_keeps_encoder_frozen(monkeypatch):
    import sslbench.protocols.run as run_mod

    knn_calls = []
    real_knn = run_mod.knn_classify

    def spy_knn(*args, **kwargs):
        knn_calls.append((kwargs["k"], kwargs["temperature"], kwargs["num_classes"]))
        return real_knn(*args, **kwargs)

    monkeypatch.setattr(run_mod, "knn_classify", spy_knn)
    train, test = tiny_images(90, seed=0), tiny_images(45, seed=1)
    test.info = TinyInfo(name="tiny-test")
    enc = tiny_encoder().train()
    before = snapshot_state(enc)
    results = evaluate(enc, train, test, FAST_SPECS, progress=False, batch_size=32, preprocess=preprocess,
                       augment=flip_augment)
    assert knn_calls == [(20, 0.07, 3), (500, 0.1, 3)]  # each spec's own settings reach the core
    assert [r.spec for r in results] == list(FAST_SPECS)
    assert all(isinstance(r, ProtocolResult) and r.eval_dataset == "tiny-test" and r.seconds >= 0 for r in results)
    for r in results:
        assert 0.0 <= r.metrics["top1"] <= 100.0 and "top5" not in r.metrics  # 3 classes
    assert results[0].params["k"] == 20.0 and results[0].params["temperature"] == 0.07
    assert results[1].params["k"] == 90.0  # clamped to the bank size
    for r in results[2:]:
        assert {"val_top1", "top1"} <= set(r.metrics) and {"lr", "weight_decay", "grid", "mode"} <= set(r.params)
        assert isinstance(json.loads(str(r.params["grid"])), dict)
    assert results[2].params["feature_dim"] == 16.0
    assert_frozen(before, enc)
    assert enc.training
    # The kNN result equals the pure core on the same features.
    feats, labels = extract_features(enc, train, preprocess=preprocess)
    tfeats, tlabels = extract_features(enc, test, preprocess=preprocess)
    from sslbench.protocols.knn import knn_classify

    assert results[0].metrics == knn_classify(feats, labels, tfeats, tlabels, num_classes=3, k=20, temperature=0.07)


class SelfModifying(nn.Module):
    """An encoder whose forward changes a buffer: evaluate must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_encoder()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.body(x)


def test_linear_probe_augmented_raises_when_encoder_changes():
    train, test = tiny_images(30, seed=0), tiny_images(15, seed=1)
    spec = dataclasses.replace(get_protocol("linear-augmented"), epochs=1, batch_size=16, lrs=(0.1,),
                               weight_decays=(0.0,))
    with pytest.raises(RuntimeError, match="calls"):
        linear_probe_augmented(SelfModifying(), train, test, spec=spec, progress=False, preprocess=preprocess,
                               augment=flip_augment)


def test_evaluate_raises_when_encoder_changes():
    train, test = tiny_images(30, seed=0), tiny_images(15, seed=1)
    with pytest.raises(RuntimeError, match="calls"):
        evaluate(SelfModifying(), train, test, FAST_SPECS[:1], progress=False, preprocess=preprocess)


def test_evaluate_rejects_unlabelled_splits():
    train, test = tiny_images(30, seed=0), tiny_images(15, seed=1)
    test.labels = torch.full((15,), -1)
    with pytest.raises(ConfigError, match="unlabelled|labels outside"):
        evaluate(tiny_encoder(), train, test, FAST_SPECS[:1], progress=False, preprocess=preprocess)


# --------------------------------------------------------------------------------------------
# Specs and registry


def test_default_registry():
    assert set(DEFAULT_PROTOCOLS) <= set(list_protocols())
    assert {"knn-k200-t0.1", "knn-k20-t0.07", "linear", "linear-augmented"} <= set(list_protocols())
    knn = get_protocol("knn-k200-t0.1")
    assert isinstance(knn, KNNSpec) and (knn.k, knn.temperature, knn.version) == (200, 0.1, 1)
    assert get_protocol("linear").mode == "features" and get_protocol("linear-augmented").mode == "augmented"


def test_unknown_protocol_name():
    with pytest.raises(UnknownNameError, match="knn-k200-t0.1"):
        get_protocol("knn-k200-t0.2")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ConfigError, match="already registered"):
        register_protocol(KNNSpec(name="linear", version=1, k=5, temperature=0.1))


@pytest.mark.parametrize("make", [
    lambda: KNNSpec(name="x", version=1, k=0, temperature=0.1),
    lambda: KNNSpec(name="x", version=1, k=True, temperature=0.1),
    lambda: KNNSpec(name="x", version=1, k=10, temperature=0.0),
    lambda: KNNSpec(name="x", version=1, k=10, temperature=float("nan")),
    lambda: KNNSpec(name="x", version=0, k=10, temperature=0.1),
    lambda: KNNSpec(name="", version=1, k=10, temperature=0.1),
    lambda: KNNSpec(name="x", version=1, k=10, temperature=0.1, kind="linear"),
    lambda: LinearSpec(name="x", version=1, val_fraction=0.0),
    lambda: LinearSpec(name="x", version=1, val_fraction=1.0),
    lambda: LinearSpec(name="x", version=1, mode="finetune"),
    lambda: LinearSpec(name="x", version=1, lrs=()),
    lambda: LinearSpec(name="x", version=1, lrs=(0.1, -1.0)),
    lambda: LinearSpec(name="x", version=1, lrs=(0.1, 0.1)),
    lambda: LinearSpec(name="x", version=1, weight_decays=(-1e-4,)),
    lambda: LinearSpec(name="x", version=1, epochs=0),
    lambda: LinearSpec(name="x", version=1, batch_size=0),
    lambda: LinearSpec(name="x", version=1, seed=0.5),
])
def test_bad_spec_values(make):
    with pytest.raises(ConfigError):
        make()


def test_spec_round_trip():
    for name in list_protocols():
        spec = get_protocol(name)
        data = json.loads(json.dumps(spec.to_dict()))
        assert data["name"] == name and data["version"] >= 1 and data["kind"] in ("knn", "linear", "semisup", "detection", "diagnostics")
        assert spec_from_dict(data) == spec
    with pytest.raises(ConfigError):
        spec_from_dict({**get_protocol("linear").to_dict(), "momentum": 0.9})
