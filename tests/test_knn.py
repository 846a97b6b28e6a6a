"""Tests of the weighted kNN core against an independent naive implementation and hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from sslbench.protocols.knn import (
    CPU_CHUNK_SIZE,
    KNN_BLOCK_ELEMENTS,
    knn_chunk_size,
    knn_classify,
    knn_predict,
    topk_correct,
)


def naive_knn_scores(features, bank, labels, num_classes, k, temperature):
    """Double loop in float64: for each query, sort cosine similarities, vote with exp(sim / T)."""
    features = features.double()
    bank = bank.double()
    out = torch.zeros(features.shape[0], num_classes, dtype=torch.float64)
    for i in range(features.shape[0]):
        q = features[i] / features[i].norm()
        sims = []
        for j in range(bank.shape[0]):
            m = bank[j] / bank[j].norm()
            sims.append((float((q * m).sum()), int(labels[j])))
        sims.sort(key=lambda s: -s[0])
        for sim, label in sims[: min(k, len(sims))]:
            out[i, label] += math.exp(sim / temperature)
    return out


def random_problem(seed, n_bank=60, n_query=13, dim=5, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(n_bank, dim, generator=g)
    labels = torch.randint(0, num_classes, (n_bank,), generator=g)
    queries = torch.randn(n_query, dim, generator=g)
    return queries, bank, labels


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (7, 0.07), (20, 0.5), (60, 1.0)])
def test_matches_naive_double_loop(k, temperature):
    queries, bank, labels = random_problem(seed=k)
    got = knn_predict(queries, bank, labels, 4, k, temperature)
    want = naive_knn_scores(queries, bank, labels, 4, k, temperature)
    assert got.shape == (13, 4)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_hand_built_circle():
    # Bank points on the unit circle at 0°, 10°, 20° (class 0) and 90°, 180° (class 1).
    angles = torch.tensor([0.0, 10.0, 20.0, 90.0, 180.0]) * math.pi / 180
    bank = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1])
    query = torch.tensor([[math.cos(math.radians(60)), math.sin(math.radians(60))]])  # 60°
    t = 0.5
    # k=2: nearest are 90° (sim cos 30°) and 20° (sim cos 40°).
    scores = knn_predict(query, bank, labels, 2, k=2, temperature=t)
    want = torch.tensor([[math.exp(math.cos(math.radians(40)) / t), math.exp(math.cos(math.radians(30)) / t)]])
    torch.testing.assert_close(scores, want)
    assert scores.argmax(1).item() == 1
    # k=4 adds 10° and 0°: class 0 now has three votes and wins.
    scores = knn_predict(query, bank, labels, 2, k=4, temperature=t)
    want0 = sum(math.exp(math.cos(math.radians(a)) / t) for a in (40, 50, 60))
    torch.testing.assert_close(scores, torch.tensor([[want0, math.exp(math.cos(math.radians(30)) / t)]]))
    assert scores.argmax(1).item() == 0


def test_temperature_changes_the_vote():
    # Class 1 has the single closest neighbour; class 0 has two slightly farther ones.
    angles = torch.tensor([0.0, 30.0, -30.0]) * math.pi / 180
    bank = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    sim = math.cos(math.radians(30))
    for t in (0.05, 1.0):
        scores = knn_predict(query, bank, labels, 2, k=3, temperature=t)
        torch.testing.assert_close(scores, torch.tensor([[2 * math.exp(sim / t), math.exp(1 / t)]]))
    # Small T: the nearest neighbour dominates; large T: the majority wins.
    assert knn_predict(query, bank, labels, 2, k=3, temperature=0.05).argmax().item() == 1
    assert knn_predict(query, bank, labels, 2, k=3, temperature=1.0).argmax().item() == 0


def test_k1_predicts_nearest_neighbour_label():
    queries, bank, labels = random_problem(seed=3, num_classes=5)
    sims = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    nearest = labels[sims.argmax(dim=1)]
    for t in (0.01, 0.1, 10.0):
        scores = knn_predict(queries, bank, labels, 5, k=1, temperature=t)
        assert torch.equal(scores.argmax(dim=1), nearest)
        assert (scores > 0).sum(dim=1).eq(1).all()  # exactly one class gets a vote


def test_k_larger_than_bank_is_clamped():
    queries, bank, labels = random_problem(seed=4, n_bank=9)
    torch.testing.assert_close(knn_predict(queries, bank, labels, 4, k=1000, temperature=0.1),
                               knn_predict(queries, bank, labels, 4, k=9, temperature=0.1))
    test_y = torch.randint(0, 4, (13,), generator=torch.Generator().manual_seed(0))
    assert knn_classify(bank, labels, queries, test_y, num_classes=4, k=1000, temperature=0.1) == knn_classify(
        bank, labels, queries, test_y, num_classes=4, k=9, temperature=0.1)


def test_scale_invariance_features_need_not_be_normalised():
    queries, bank, labels = random_problem(seed=5)
    g = torch.Generator().manual_seed(0)
    q_scale = torch.rand(queries.shape[0], 1, generator=g) * 10 + 0.1
    b_scale = torch.rand(bank.shape[0], 1, generator=g) * 10 + 0.1
    torch.testing.assert_close(knn_predict(queries * q_scale, bank * b_scale, labels, 4, 7, 0.1),
                               knn_predict(queries, bank, labels, 4, 7, 0.1), rtol=1e-5, atol=1e-5)


def test_chunking_gives_identical_results():
    g = torch.Generator().manual_seed(6)
    train = torch.randn(300, 16, generator=g)
    train_y = torch.randint(0, 10, (300,), generator=g)
    test = torch.randn(101, 16, generator=g)
    test_y = torch.randint(0, 10, (101,), generator=g)
    full = knn_classify(train, train_y, test, test_y, num_classes=10, k=20, temperature=0.07, chunk_size=10_000)
    for chunk in (1, 7, 50, 101):
        assert knn_classify(train, train_y, test, test_y, num_classes=10, k=20, temperature=0.07,
                            chunk_size=chunk) == full
    # the default (1024 rows on the CPU) and the chunk CUDA would pick for this bank
    cuda_chunk = knn_chunk_size(300, "cuda")
    assert knn_classify(train, train_y, test, test_y, num_classes=10, k=20, temperature=0.07) == full
    assert knn_classify(train, train_y, test, test_y, num_classes=10, k=20, temperature=0.07,
                        chunk_size=cuda_chunk) == full


def test_chunk_size_from_the_memory_budget():
    assert knn_chunk_size(50_000, "cpu") == knn_chunk_size(10, torch.device("cpu")) == CPU_CHUNK_SIZE == 1024
    for n in (1, 1000, 50_000, 1_281_167, 2**29):
        chunk = knn_chunk_size(n, torch.device("cuda"))  # a device object needs no GPU
        assert chunk >= 1 and (chunk * n <= KNN_BLOCK_ELEMENTS or chunk == 1)
        assert chunk == max(1, KNN_BLOCK_ELEMENTS // n)
    assert knn_chunk_size(50_000, "cuda:0") == 5368  # 10,000 test rows in 2 blocks, not 10
    with pytest.raises(ValueError, match="chunk_size"):
        knn_classify(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), torch.randn(3, 2),
                     torch.zeros(3, dtype=torch.long), num_classes=2, k=2, temperature=0.1, chunk_size=0)


def test_accuracy_top1_top5_by_hand():
    # 10 classes, each a direction e_c; the bank holds 3 points per class near e_c.
    num_classes = 10
    g = torch.Generator().manual_seed(7)
    centres = torch.eye(num_classes)
    bank = centres.repeat_interleave(3, dim=0) + 0.01 * torch.randn(30, num_classes, generator=g)
    bank_y = torch.arange(num_classes).repeat_interleave(3)
    # Queries: 4 sit on their class centre (top-1 right); 3 sit between class c (weight 0.6) and
    # c+1 (weight 1.0) with label c: top-1 wrong but top-5 right.
    q_good = centres[:4]
    q_between = 0.6 * centres[4:7] + 1.0 * centres[5:8]
    queries = torch.cat([q_good, q_between])
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    res = knn_classify(bank, bank_y, queries, labels, num_classes=10, k=6, temperature=0.1)
    assert res == pytest.approx({"top1": 100 * 4 / 7, "top5": 100.0})
    # Query far from class 9's direction, labelled 9, with k=3: class 9 gets no vote, 9 classes
    # tie at 0 -> it ranks after the 0-scored classes with a smaller index, so it is not in top-5.
    res = knn_classify(bank, bank_y, centres[:1], torch.tensor([9]), num_classes=10, k=3, temperature=0.1)
    assert res == {"top1": 0.0, "top5": 0.0}


def test_top5_only_with_at_least_five_classes():
    queries, bank, labels = random_problem(seed=8, num_classes=4)
    res = knn_classify(bank, labels, queries, torch.zeros(13, dtype=torch.long), num_classes=4, k=5, temperature=0.1)
    assert set(res) == {"top1"}


def test_topk_correct_tie_breaking():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([1, 1, 2])
    # Row 0: tie 0/1 -> class 0 first, label 1 is second. Row 1: tie 1/2 -> class 1 first.
    # Row 2: label 2 second.
    assert topk_correct(scores, labels, (1, 2)) == {1: 1, 2: 3}


def test_topk_agrees_with_torch_topk_without_ties():
    g = torch.Generator().manual_seed(9)
    scores = torch.randn(200, 12, generator=g)
    labels = torch.randint(0, 12, (200,), generator=g)
    for k in (1, 3, 5):
        want = (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        assert topk_correct(scores, labels, (k,))[k] == want


def test_invalid_arguments():
    queries, bank, labels = random_problem(seed=10)
    with pytest.raises(ValueError):
        knn_predict(queries, bank, labels, 4, k=0, temperature=0.1)
    with pytest.raises(ValueError):
        knn_predict(queries, bank, labels, 4, k=5, temperature=0.0)
    with pytest.raises(ValueError):
        knn_predict(queries[:, :3], bank, labels, 4, k=5, temperature=0.1)
    with pytest.raises(ValueError):
        knn_classify(bank, labels, queries, torch.full((13,), 7), num_classes=4, k=5, temperature=0.1)
