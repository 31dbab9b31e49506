"""Planted answers for eptk.metrics."""
import math

import numpy as np
import pytest
import torch

from eptk import metrics as M


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def vocab():
    return torch.randn(500, 24, generator=gen(1))


@pytest.fixture(scope="module")
def data():
    g = gen(2)
    mixing = torch.randn(16, 16, generator=g) / 4 + torch.eye(16)
    samples = torch.randn(800, 16, generator=g) @ mixing + 3.0
    return samples, mixing


def test_displacement():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    q = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    d = M.displacement(p, q)
    assert d["l2_rows"] == pytest.approx([1.0, 0.0])
    assert d["l2_rel_rows"] == pytest.approx([1.0, 0.0])
    assert d["cos_rows"] == pytest.approx([1 / math.sqrt(2), 1.0])
    assert d["l2"] == pytest.approx(0.5)


def test_vocab_rows_are_fully_collapsed_onto_their_own_tokens(vocab):
    tokens = [f"tok{i}" for i in range(vocab.shape[0])]
    ids = [3, 17, 250, 499, 42]
    threshold = M.collapse_threshold(vocab)
    assert 0 < threshold < 0.99
    out = M.vocab_neighbours(vocab[ids] * 1.7, vocab, tokens, k=3, threshold=threshold)  # scale does not matter
    assert out["collapsed_share"] == 1.0
    assert out["nearest"] == ids
    assert [row[0] for row in out["topk_tokens"]] == [f"tok{i}" for i in ids]
    assert out["max_cos"] == pytest.approx([1.0] * len(ids))
    assert all(row == sorted(row, reverse=True) for row in out["topk_cos"])


def test_nearest_token_kept_and_chunking(vocab):
    ids = [5, 6, 7, 8]
    prior = vocab[ids]
    post = prior.clone()
    post[0] = vocab[100]  # moved onto another token
    out = M.vocab_neighbours(post, vocab, None, k=4, prior=prior, chunk=37)  # chunks of odd size agree
    assert out["nn_kept"] == [False, True, True, True]
    assert out["nn_kept_share"] == 0.75
    full = M.vocab_neighbours(post, vocab, None, k=4, chunk=10_000)
    assert out["topk_ids"] == full["topk_ids"]
    assert math.isnan(full["collapsed_share"])  # no threshold given


def test_random_vectors_are_not_collapsed(vocab):
    threshold = M.collapse_threshold(vocab, seed=3)
    far = M.vocab_neighbours(torch.randn(50, 24, generator=gen(4)) * 0.02, vocab, None, threshold=threshold)
    assert far["collapsed_share"] < 0.5


def test_effective_rank_of_rank_r_matrix():
    for r in (1, 3, 7):
        u = torch.linalg.qr(torch.randn(60, r, generator=gen(r)))[0]
        v = torch.linalg.qr(torch.randn(40, r, generator=gen(r + 10)))[0]
        flat = u @ v.T * 5.0
        assert M.effective_rank(flat) == pytest.approx(r, abs=1e-3)
        random_rank_r = torch.randn(60, r, generator=gen(r)) @ torch.randn(r, 40, generator=gen(r + 1))
        assert r - 1.0 < M.effective_rank(random_rank_r) <= r + 1e-6
    assert M.participation_ratio(torch.randn(2000, 4, generator=gen(5))) == pytest.approx(4, rel=0.1)


def test_anisotropy_and_norms():
    assert M.mean_pairwise_cosine(torch.ones(6, 3)) == pytest.approx(1.0)
    assert abs(M.mean_pairwise_cosine(torch.randn(400, 32, generator=gen(6)))) < 0.02
    assert math.isnan(M.mean_pairwise_cosine(torch.ones(1, 3)))
    ref = torch.randn(1000, 8, generator=gen(7))
    inside = M.norm_position(torch.randn(50, 8, generator=gen(8)), ref)
    big = M.norm_position(torch.randn(50, 8, generator=gen(9)) * 100, ref)
    assert 25 < inside["norm_pctile"] < 75 and inside["outside_share"] < 0.2
    assert big["norm_pctile"] == 100.0 and big["outside_share"] == 1.0


def test_posterior_from_the_data_gaussian_is_inside_and_far_one_is_outside(data):
    samples, mixing = data
    gauss = M.DataGaussian(samples.mean(0), torch.cov(samples.T), samples)
    near = torch.randn(30, 16, generator=gen(13)) @ mixing + 3.0  # seeded: p is uniform under H0
    far = near + 25.0
    inside = M.region_position(near, gauss)
    outside = M.region_position(far, gauss)
    assert inside["radius_kind"] == "empirical"
    assert inside["inside_share"] >= 0.9 and inside["maha_rel"] < 1
    assert outside["inside_share"] == 0.0 and outside["maha_rel"] > 1
    no_samples = M.DataGaussian(samples.mean(0), torch.cov(samples.T), shrinkage=0.0)
    assert no_samples.radius()[1] == "chi2"
    assert M.region_position(near, no_samples)["inside_share"] >= 0.9

    mmd_near, mmd_far = M.mmd_rbf(near, samples, seed=0), M.mmd_rbf(far, samples, seed=0)
    assert mmd_near["p"] > 0.05
    assert mmd_far["p"] < 0.01 and mmd_far["mmd2"] > mmd_near["mmd2"]
    e_near, e_far = M.energy_distance(near, samples), M.energy_distance(far, samples)
    assert e_near["p"] > 0.05 and e_far["p"] < 0.01 and e_far["energy"] > e_near["energy"]

    knn_near = M.knn_precision_recall(samples, near, k=5)
    knn_far = M.knn_precision_recall(samples, far, k=5)
    assert knn_near["precision"] > 0.7 and knn_near["density"] > 0.5
    assert knn_far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert math.isnan(M.knn_precision_recall(samples, near[:3], k=5)["recall"])  # fewer fake points than k


def test_mmd_is_reproducible(data):
    samples, _ = data
    x = samples[:20] + 0.3
    assert M.mmd_rbf(x, samples, seed=4) == M.mmd_rbf(x, samples, seed=4)


def test_steps_to_fraction():
    assert M.steps_to_fraction([0, 10, 20, 30], [3.0, 2.0, 1.1, 1.0]) == 20
    assert M.steps_to_fraction([0, 10], [1.0, 1.5]) is None
    assert M.steps_to_fraction([0], [1.0]) is None


def test_silhouette_and_nc1_separate_planted_clusters():
    g = gen(12)
    a = torch.randn(150, 10, generator=g)
    b = torch.randn(150, 10, generator=g) + 8.0
    x = torch.cat([a, b])
    labels = ["a"] * 150 + ["b"] * 150
    mixed = list(np.random.default_rng(0).permutation(labels))
    assert M.silhouette(x, labels) > 0.6
    assert abs(M.silhouette(x, mixed)) < 0.1
    assert M.nc1(x, labels) < 0.1 < M.nc1(x, mixed)
    metrics = pytest.importorskip("sklearn.metrics")
    three = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    assert M.silhouette(x, three) == pytest.approx(metrics.silhouette_score(x.numpy(), three), abs=1e-6)


def test_frechet_distance():
    assert M.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(3)) == pytest.approx(0, abs=1e-9)
    # ‖μ1 − μ2‖² = 3; tr(I + 4I − 2·2I) = 3
    assert M.frechet_distance(torch.zeros(3), torch.eye(3), torch.ones(3), 4 * torch.eye(3)) == pytest.approx(6.0)


def test_trajectory_localization(vocab):
    local = torch.cumsum(torch.randn(40, 24, generator=gen(13)) * 0.05, dim=0) + vocab[0]
    assert M.trajectory_localization(local, vocab)["p"] < 1e-6
    unrelated = vocab[torch.randint(0, 500, (40,), generator=gen(14))]
    assert M.trajectory_localization(unrelated, vocab, seed=1)["p"] > 0.05
