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


# ---- the functions mutation testing found untested (benchmarks/results/mutation.md) ---------------------------

def test_pca_2d_is_the_top_two_principal_directions(data):
    """Exact SVD when few rows or dimensions (min(n, d) ≤ 20), randomized subspace iteration above: both give
    the top two right singular vectors of the centred rows (up to sign) and their variance shares."""
    samples, _ = data
    for x in (samples[:15], samples, torch.cat([samples, samples[:, :8] * 0.5], dim=1)):  # n ≤ 20; d ≤ 20; both > 20
        x64 = x.double()
        xc = x64 - x64.mean(0)
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
        got = M.pca_2d(x, max_n=None if x.shape[0] > 5000 else 5000)
        torch.testing.assert_close(got["mean"], x64.mean(0))
        assert got["components"].shape == (2, x.shape[1])
        for i in range(2):
            assert abs(float(got["components"][i] @ vh[i])) == pytest.approx(1.0, abs=1e-6), i
        assert got["explained"] == pytest.approx((s[:2] ** 2 / (s ** 2).sum()).tolist(), rel=1e-6)


def test_pca_2d_subsamples_seeded_and_handles_degenerate_input(data):
    samples, _ = data
    a, b = M.pca_2d(samples, max_n=50, seed=3), M.pca_2d(samples, max_n=50, seed=3)
    torch.testing.assert_close(a["components"], b["components"])
    assert not torch.allclose(a["mean"], M.pca_2d(samples, max_n=50, seed=4)["mean"])  # another subsample
    assert not torch.allclose(a["mean"], samples.double().mean(0))
    torch.testing.assert_close(M.pca_2d(samples.numpy())["mean"], samples.double().mean(0))  # arrays too
    torch.testing.assert_close(M.pca_2d(samples.reshape(8, 100, 16))["mean"], samples.double().mean(0))
    one = M.pca_2d(samples[:1])
    assert torch.equal(one["components"], torch.eye(2, 16, dtype=torch.float64))
    assert all(math.isnan(v) for v in one["explained"])
    line = M.pca_2d(torch.arange(10.0)[:, None])  # one dimension: a second, zero component
    assert line["components"].shape == (2, 1) and float(line["components"][1, 0]) == 0.0
    assert line["explained"] == pytest.approx([1.0, 0.0])


def explicit_trajectory_against_data(x, ref, walk_pairs, n_perm, seed):
    """The docstring's quantities, computed row by row with the same seeded draws."""
    x, ref = x.double(), ref.double()
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(ref.shape[0], (walk_pairs,), generator=g)
    j = (i + torch.randint(1, ref.shape[0], (walk_pairs,), generator=g)) % ref.shape[0]
    walk = float(np.mean([float((ref[a] - ref[b]).norm()) for a, b in zip(i.tolist(), j.tolist())]))
    mean_step = float(np.mean([float((x[t + 1] - x[t]).norm()) for t in range(x.shape[0] - 1)]))
    null = []
    for _ in range(n_perm):
        y = x[torch.randperm(x.shape[0], generator=g)]
        null.append(float(np.mean([float((y[t + 1] - y[t]).norm()) for t in range(y.shape[0] - 1)])))
    radius = float(np.mean([float((r - x.mean(0)).norm()) for r in x]))
    data_radius = float(np.mean([float((r - ref.mean(0)).norm()) for r in ref]))
    return {"points": x.shape[0], "mean_step": mean_step, "walk_step": walk, "step_ratio": mean_step / walk,
            "radius": radius, "data_radius": data_radius, "spread_ratio": radius / data_radius,
            "order_p": (1 + sum(v <= mean_step + 1e-12 for v in null)) / (1 + n_perm)}


def test_trajectory_against_data_is_its_definition(data):
    samples, _ = data
    ref = samples[:60]
    smooth = samples[0] + torch.linspace(0, 1, 12)[:, None] * (samples[1] - samples[0])  # a straight path
    jumpy = samples[100:112]
    for x in (smooth, jumpy):
        got = M.trajectory_against_data(x, ref, n_perm=40, walk_pairs=64, seed=5)
        want = explicit_trajectory_against_data(x, ref, 64, 40, 5)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert M.trajectory_against_data(smooth, ref, n_perm=40, seed=5)["order_p"] == pytest.approx(1 / 41)


def test_trajectory_against_data_needs_two_points_on_each_side(data):
    samples, _ = data
    for x, ref in ((samples[:1], samples[:10]), (samples[:5], samples[:1])):
        got = M.trajectory_against_data(x, ref)
        assert got["points"] == x.shape[0]
        assert all(math.isnan(got[k]) for k in ("mean_step", "walk_step", "step_ratio", "radius", "data_radius",
                                                "spread_ratio", "order_p"))
    same = samples[:1].repeat(4, 1)  # every data token at one point: no walk, no radius, ratios undefined
    got = M.trajectory_against_data(samples[:3], same, n_perm=5)
    assert got["walk_step"] == 0 and math.isnan(got["step_ratio"]) and math.isnan(got["spread_ratio"])


def test_tsne_2d_separates_planted_clusters_reproducibly():
    g = gen(7)
    x = torch.cat([torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g) + 12.0])
    a = M.tsne_2d(x, seed=1)
    assert a.shape == (40, 2) and a.dtype == torch.float64
    torch.testing.assert_close(a, M.tsne_2d(x, seed=1))
    assert M.silhouette(a, [0] * 20 + [1] * 20) > 0.5
    assert M.tsne_2d(x[:5], seed=0).shape == (5, 2)  # perplexity capped below the row count


def test_participation_ratio_is_its_formula_from_the_covariance(data):
    samples, _ = data
    x = samples[:40].double()
    lam = torch.linalg.eigvalsh(torch.cov(x.T, correction=0) * x.shape[0])  # eigenvalues of the centred scatter
    assert M.participation_ratio(x) == pytest.approx(float(lam.sum() ** 2 / (lam ** 2).sum()), rel=1e-9)
    shifted = x + 100.0  # centred: the mean does not count
    assert M.participation_ratio(shifted) == pytest.approx(M.participation_ratio(x), rel=1e-9)
    two = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    assert M.participation_ratio(two) == pytest.approx(1.0)  # two points: one direction of variance
    assert M.participation_ratio(torch.eye(3)[:, :1] * 0.01) == pytest.approx(1.0)  # small variance still counts
    assert math.isnan(M.participation_ratio(x[:1]))
    assert math.isnan(M.participation_ratio(x[:1].repeat(5, 1)))  # no variance at all


def test_collapse_threshold_edge_cases():
    assert math.isnan(M.collapse_threshold(torch.randn(1, 4, generator=gen(0))))
    assert M.collapse_threshold(torch.eye(2), quantile=1.0) == pytest.approx(0.0, abs=1e-7)  # never a row with itself
    assert M.collapse_threshold(torch.eye(6).numpy(), quantile=1.0) == pytest.approx(0.0, abs=1e-7)
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert M.collapse_threshold(same) == pytest.approx(1.0)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # pairs: cos 0 (4 of 6 orders) or 1 (2 of 6)
    assert M.collapse_threshold(mixed, quantile=0.5, n_pairs=20000, seed=1) == pytest.approx(0.0, abs=1e-7)
    assert M.collapse_threshold(mixed, quantile=0.9, n_pairs=20000, seed=1) == pytest.approx(1.0)
    # every row is drawn as the first of a pair: 1/3 of the pairs are a row with its twin, above the 0.667 quantile
    assert M.collapse_threshold(mixed, quantile=0.7, n_pairs=20000, seed=1) == pytest.approx(1.0)
    pairs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # the other row is any of the three
    assert M.collapse_threshold(pairs, quantile=0.7, n_pairs=20000, seed=1) == pytest.approx(1.0)
    assert M.collapse_threshold(pairs, quantile=0.6, n_pairs=20000, seed=1) == pytest.approx(0.0, abs=1e-7)


def test_collapse_threshold_is_seeded(vocab):
    assert M.collapse_threshold(vocab, n_pairs=500, seed=3) == M.collapse_threshold(vocab, n_pairs=500, seed=3)
    assert M.collapse_threshold(vocab, n_pairs=500, seed=3) != M.collapse_threshold(vocab, n_pairs=500, seed=4)


def test_data_gaussian_symmetrizes_and_chooses_its_shrinkage(data):
    from eptk import linalg

    samples, _ = data
    x = samples.double()
    mean, cov = x.mean(0), torch.cov(x.T)
    skew = cov + 1e-3 * torch.triu(torch.ones(16, 16, dtype=torch.float64), 1)
    a, b = M.DataGaussian(mean, skew, shrinkage=0.2), M.DataGaussian(mean, (skew + skew.T) / 2, shrinkage=0.2)
    torch.testing.assert_close(a.mahalanobis(x[:5]), b.mahalanobis(x[:5]))
    want = linalg.mahalanobis(x[:5], linalg.psd_cholesky(linalg.shrink((skew + skew.T) / 2, 0.2), ridge=1e-10), mean)
    torch.testing.assert_close(b.mahalanobis(x[:5]).double(), want, rtol=1e-6, atol=1e-9)
    assert M.DataGaussian(mean, cov, x[:3]).shrinkage == pytest.approx(linalg.ledoit_wolf_shrinkage(x[:3]))
    assert M.DataGaussian(mean, cov, x[:2]).shrinkage == 0.1 and M.DataGaussian(mean, cov).shrinkage == 0.1
    assert M.DataGaussian(mean, cov, x[:, :2]).dim == 16
    singular = torch.zeros(16, 16, dtype=torch.float64)
    singular[0, 0] = 1.0
    g = M.DataGaussian(mean, singular, shrinkage=0.0)  # a ridge (×100 per try, from 1e-10) makes it factorable
    assert torch.isfinite(g.mahalanobis(x[:3])).all()


def explicit_knn(real, fake, k):
    """Kynkäänniemi et al.'s precision and recall and Naeem et al.'s density and coverage, point by point."""
    real, fake = real.double(), fake.double()
    kr = min(k, real.shape[0] - 1)

    def kth_radius(points, kk):
        return [sorted(float((p - q).norm()) for q in points)[kk] for p in points]  # [0] is the point itself
    r_real = kth_radius(real, kr)
    inside = [[float((f - r).norm()) <= rad for r, rad in zip(real, r_real)] for f in fake]
    out = {"precision": float(np.mean([any(row) for row in inside])),
           "density": float(np.mean([sum(row) / kr for row in inside])),
           "coverage": float(np.mean([any(inside[i][j] for i in range(len(fake))) for j in range(len(real))])),
           "recall": float("nan")}
    if fake.shape[0] > k:
        r_fake = kth_radius(fake, k)
        out["recall"] = float(np.mean([any(float((r - f).norm()) <= rad for f, rad in zip(fake, r_fake))
                                       for r in real]))
    return out


@pytest.mark.parametrize("n_real,n_fake,k,shift", [(30, 12, 3, 0.0), (30, 12, 3, 1.5), (25, 4, 5, 0.5),
                                                    (6, 10, 8, 0.3), (40, 6, 5, 0.0)])
def test_knn_precision_recall_is_its_definition(n_real, n_fake, k, shift):
    g = gen(n_real + n_fake + k)
    real = torch.randn(n_real, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(n_fake, 3, generator=g, dtype=torch.float64) * 0.8 + shift
    got = M.knn_precision_recall(real, fake, k=k)
    want = explicit_knn(real, fake, k)
    for key in ("precision", "density", "coverage", "recall"):
        assert (math.isnan(got[key]) and math.isnan(want[key])) or got[key] == pytest.approx(want[key]), key


def test_knn_ball_boundaries_count_as_inside():
    """A point exactly on a ball's radius is inside it (≤), for precision, density, coverage and recall."""
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)   # each real radius (k=1) is 1
    fake = torch.tensor([[4.0], [5.0], [6.0]], dtype=torch.float64)         # fake radii (k=1) are 1
    got = M.knn_precision_recall(real, fake, k=1)
    assert got == pytest.approx(explicit_knn(real, fake, 1))
    assert got["precision"] == pytest.approx(1 / 3) and got["recall"] == pytest.approx(1 / 4)


def test_knn_precision_recall_undefined_and_subsampled():
    g = gen(9)
    real, fake = torch.randn(50, 3, generator=g), torch.randn(5, 3, generator=g)
    assert all(math.isnan(v) for v in M.knn_precision_recall(real[:1], fake).values())  # no neighbour in real
    assert all(math.isnan(v) for v in M.knn_precision_recall(real, fake[:0]).values())
    one = M.knn_precision_recall(real, fake[:1], k=1)
    assert not math.isnan(one["precision"]) and math.isnan(one["recall"])
    a = M.knn_precision_recall(real, fake, k=2, max_real=10, seed=1)
    assert a == M.knn_precision_recall(real, fake, k=2, max_real=10, seed=1)
    assert a != M.knn_precision_recall(real, fake, k=2, max_real=10, seed=2)  # the seed picks the subsample
    assert a != M.knn_precision_recall(real, fake, k=2, max_real=None)


def explicit_two_sample(x, y, n_perm, seed):
    """Unbiased MMD² (RBF, median pooled distance as h) and energy distance over distinct pairs, with the same
    seeded permutations: p = (1 + #{permuted ≥ observed}) / (1 + n_perm)."""
    z = torch.cat([x, y]).double()
    m, n = x.shape[0], y.shape[0]
    dist = torch.cdist(z, z)
    h = max(float(dist[~torch.eye(m + n, dtype=torch.bool)].median()), 1e-12)
    rbf = torch.exp(-dist ** 2 / (2 * h * h))

    def stats(idx):
        a, b = idx[:m], idx[m:]
        def mean_off(K, p, q, same):
            vals = [float(K[i, j]) for i in p for j in q if not (same and i == j)]
            return float(np.mean(vals))
        mmd = mean_off(rbf, a, a, True) + mean_off(rbf, b, b, True) - 2 * mean_off(rbf, a, b, False)
        energy = 2 * mean_off(dist, a, b, False) - mean_off(dist, a, a, True) - mean_off(dist, b, b, True)
        return mmd, energy
    observed = stats(list(range(m + n)))
    g = torch.Generator().manual_seed(seed + 1)
    null = []
    for _ in range(n_perm):
        chosen = torch.randperm(m + n, generator=g)[:m].tolist()
        rest = [i for i in range(m + n) if i not in set(chosen)]
        null.append(stats(sorted(chosen) + rest))
    p = [(1 + sum(s[c] >= observed[c] - 1e-12 for s in null)) / (1 + n_perm) for c in (0, 1)]
    return {"mmd2": observed[0], "mmd_p": p[0], "bandwidth": h, "energy": observed[1], "energy_p": p[1]}


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_two_sample_tests_are_their_definitions(shift):
    g = gen(11)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64) + shift
    got = M.DataSample(y, max_n=None).two_sample_tests(x, n_perm=15, seed=4)
    want = explicit_two_sample(x, y, 15, 4)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    mmd, energy = M.mmd_rbf(x, y, n_perm=15, seed=4, max_n=None), M.energy_distance(x, y, n_perm=15, seed=4, max_n=None)
    assert mmd == pytest.approx({"mmd2": want["mmd2"], "p": want["mmd_p"], "bandwidth": want["bandwidth"]})
    assert energy == pytest.approx({"energy": want["energy"], "p": want["energy_p"]})
    assert M.mmd_rbf(x, y, n_perm=15, seed=4, max_n=5) != mmd  # the reference is subsampled first
    assert M.energy_distance(x, y, n_perm=7, seed=4, max_n=None)["p"] * 8 == pytest.approx(
        round(M.energy_distance(x, y, n_perm=7, seed=4, max_n=None)["p"] * 8))


def test_two_sample_tests_need_two_points_on_each_side():
    y = torch.randn(9, 2, generator=gen(12))
    for sample, x in ((M.DataSample(y), y[:1]), (M.DataSample(y[:1]), y)):
        out = sample.two_sample_tests(x, n_perm=5)
        assert set(out) == {"mmd2", "mmd_p", "bandwidth", "energy", "energy_p"}
        assert all(math.isnan(v) for v in out.values())


def test_steps_to_fraction_edges():
    assert M.steps_to_fraction([0, 10, 20], [2.0, 1.0, 1.0]) == 10
    assert M.steps_to_fraction([0, 10, 20, 30], [2.0, 1.2, 1.0, 1.05], fraction=0.9) == 20  # the last is not the best
    assert M.steps_to_fraction([0, 10], [2.0, 1.0]) == 10
    assert M.steps_to_fraction([0, 10, 20], [0.5, 0.4, 0.45], fraction=1.0) == 10  # reached by step 10 already
    assert M.steps_to_fraction([0, 10, 20], [0.5, 0.45, 0.4], fraction=1.0) == 20
    assert M.steps_to_fraction([0, 5, 10], [1.0, float("nan"), 0.5]) == 10  # non-finite values are skipped
    assert M.steps_to_fraction([0, 5, 10], [1.0, None, 0.5]) == 10
    assert M.steps_to_fraction([0, 5], [1.0, float("inf")]) is None
    assert M.steps_to_fraction([0, 10], [1.0, 1.0]) is None and M.steps_to_fraction([0], [1.0]) is None
    assert M.steps_to_fraction([0, 10], [0.5, 0.4]) == 10        # a gain below one is a gain
    assert M.steps_to_fraction([0, 10, 20], [1.0, 0.5, 0.75], fraction=3.0) == 20  # never reached: the last step
    assert isinstance(M.steps_to_fraction([0.0, 10.0], [1.0, 0.0]), int)


def test_nc1_and_silhouette_against_their_definitions():
    sk = pytest.importorskip("sklearn.metrics")
    g = gen(13)
    x = torch.cat([torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 2, torch.randn(1, 3, generator=g)])
    labels = ["a"] * 7 + ["b"] * 5 + ["c"]  # a singleton cluster scores 0
    assert M.silhouette(x, labels) == pytest.approx(float(sk.silhouette_score(x.double().numpy(), labels)), rel=1e-9)
    assert M.silhouette(x[:12].double() * 1e-3, labels[:12]) == pytest.approx(
        float(sk.silhouette_score(x[:12].double().numpy() * 1e-3, labels[:12])), rel=1e-9)  # scale-free
    assert math.isnan(M.silhouette(x, ["a"] * 13))
    lab = np.array(labels[:12])
    z = x[:12].double()
    means = torch.stack([z[torch.as_tensor(lab == c)].mean(0) for c in ("a", "b")])
    within = [((z[torch.as_tensor(lab == c)] - means[i]) ** 2).sum(1).mean() for i, c in enumerate(("a", "b"))]
    between = ((means - means.mean(0)) ** 2).sum(1).mean()
    assert M.nc1(z, lab) == pytest.approx(float(torch.stack(within).mean() / between), rel=1e-9)
    assert M.nc1(z * 1e-3, lab) == pytest.approx(float(torch.stack(within).mean() / between), rel=1e-9)
    assert math.isnan(M.nc1(z, ["a"] * 12))


def test_row_helpers_take_arrays_and_any_shape():
    x = np.arange(12.0).reshape(2, 3, 2)
    assert M._rows(x).shape == (6, 2) and M._rows(x).dtype == torch.float64
    assert M._rows(torch.ones(3)).shape == (1, 3)
    r32 = M._rows32(x)
    assert r32.dtype == torch.float32 and r32.device.type == "cpu" and torch.equal(r32, torch.as_tensor(x).float())
    assert M._rows32(torch.ones(2, 2, dtype=torch.float64)).dtype == torch.float32
    units = M._unit(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-6, 0.0]]))
    torch.testing.assert_close(units, torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]))  # tiny norms still unit
    rows = torch.arange(10.0)[:, None]
    assert torch.equal(M.subsample_rows(rows, None, 0), rows) and torch.equal(M.subsample_rows(rows, 10, 0), rows)
    picked = M.subsample_rows(rows, 4, 1)
    assert picked.shape == (4, 1) and len(set(picked[:, 0].tolist())) == 4
    assert torch.equal(picked, M.subsample_rows(rows, 4, 1))
    assert not torch.equal(picked, M.subsample_rows(rows, 4, 2))
    assert M.subsample_rows(torch.zeros(9, 20), 5, 0).shape == (5, 20)


def test_displacement_relative_to_small_priors_and_its_refusal():
    p = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    q = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    d = M.displacement(p, q)
    assert d["l2_rel_rows"][0] == pytest.approx(1.0)                    # 0.5 moved from a norm of 0.5
    assert d["l2_rel_rows"][1] == pytest.approx(1e12)                   # a zero prior row: divided by 1e-12
    assert d["l2_rel"] == pytest.approx(np.mean(d["l2_rel_rows"])) and d["cos"] == pytest.approx(np.mean(d["cos_rows"]))
    with pytest.raises(ValueError) as refused:
        M.displacement(torch.zeros(2, 3), torch.zeros(3, 3))
    assert str(refused.value) == "prior (2, 3) and posterior (3, 3) differ in shape"


def test_effective_rank_drops_noise_below_the_input_precision():
    basis = torch.linalg.qr(torch.randn(6, 6, generator=gen(3), dtype=torch.float64)).Q
    r2 = basis[:, :2] @ torch.diag(torch.tensor([3.0, 3.0], dtype=torch.float64)) @ basis[:, :2].T
    assert M.effective_rank(r2) == pytest.approx(2.0)
    noisy = r2 + 1e-13 * torch.randn(6, 6, generator=gen(4), dtype=torch.float64)  # below float32's floor only
    assert M.effective_rank(noisy.float()) == pytest.approx(2.0, abs=1e-3)
    assert M.effective_rank(noisy) > 2.0 + 1e-12                     # float64 keeps it
    assert M.effective_rank(noisy.numpy()) == pytest.approx(M.effective_rank(noisy))  # arrays count as float64
    assert math.isnan(M.effective_rank(torch.zeros(3, 4)))
    assert math.isnan(M.effective_rank(torch.zeros(0, 4)))          # no rows: no singular values at all
    assert M.effective_rank(torch.eye(3)) == pytest.approx(3.0)


def test_frechet_distance_is_its_formula_for_non_commuting_covariances():
    from scipy.linalg import sqrtm
    a = torch.randn(4, 4, generator=gen(5), dtype=torch.float64)
    b = torch.randn(4, 4, generator=gen(6), dtype=torch.float64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(4, dtype=torch.float64)
    m1, m2 = torch.tensor([1.0, 2.0, 0.0, -1.0]), torch.tensor([0.5, -1.0, 2.0, 0.0])
    cross = np.real(sqrtm(c1.numpy() @ c2.numpy())).trace()
    want = float(((m1 - m2) ** 2).sum()) + float(c1.trace() + c2.trace()) - 2 * cross
    assert M.frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-8)
    assert M.frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-8)


def test_mean_pairwise_cosine_of_two_vectors():
    assert M.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx(1 / math.sqrt(2))
    assert M.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])) == pytest.approx(-1 / 3)
    assert math.isnan(M.mean_pairwise_cosine(torch.ones(1, 3)))


def test_norm_position_ranks_ties_and_bounds():
    ref = torch.arange(1.0, 101.0)[:, None]  # norms 1..100
    got = M.norm_position(torch.tensor([[50.0], [0.5], [100.5]]), ref)
    assert got["norm_pctile"] == pytest.approx((50 + 0 + 100) / 3)  # a tie counts as at or below
    p1, p99 = float(torch.quantile(ref[:, 0], 0.01)), float(torch.quantile(ref[:, 0], 0.99))
    assert (got["ref_p1"], got["ref_p50"], got["ref_p99"]) == pytest.approx((p1, 50.5, p99))
    assert got["outside_share"] == pytest.approx(2 / 3) and got["norm_mean"] == pytest.approx(151 / 3)
    on_bounds = M.norm_position(torch.tensor([[p1], [p99]]), ref)
    assert on_bounds["outside_share"] == 0.0  # the range's ends are inside


def test_step_lengths_are_the_distances_between_consecutive_rows():
    assert np.allclose(M.step_lengths(torch.tensor([[0.0], [2.0], [7.0]])), [2.0, 5.0])


def test_defaults_are_the_documented_ones(vocab, data):
    samples, _ = data
    assert M.knn_precision_recall(samples[:30], samples[30:40]) == \
        M.knn_precision_recall(samples[:30], samples[30:40], k=5, max_real=2000, seed=0)
    x, y = samples[:6], torch.cat([samples, samples + 0.5])      # 1,600 rows: max_n = 1000 subsamples them
    assert M.mmd_rbf(x, y, n_perm=20) == M.mmd_rbf(x, y, n_perm=20, seed=0, max_n=1000)
    assert M.energy_distance(x, y, n_perm=20) == M.energy_distance(x, y, n_perm=20, seed=0, max_n=1000)
    assert M.energy_distance(x, y, n_perm=20) != M.energy_distance(x, y, n_perm=20, max_n=1001)
    assert M.energy_distance(x, y)["p"] == M.energy_distance(x, y, n_perm=200)["p"]
    shared = M.DataSample(y, max_n=500, seed=3).two_sample_tests(x, n_perm=20, seed=3)  # y subsampled by its seed
    assert M.energy_distance(x, y, n_perm=20, seed=3, max_n=500) == {"energy": shared["energy"], "p": shared["energy_p"]}
    assert M.mmd_rbf(x, y, n_perm=20, seed=3, max_n=500) == \
        {"mmd2": shared["mmd2"], "p": shared["mmd_p"], "bandwidth": shared["bandwidth"]}
    assert M.mmd_rbf(x, y)["p"] == M.mmd_rbf(x, y, n_perm=200)["p"]
    assert M.mmd_rbf(x, y, n_perm=20) != M.mmd_rbf(x, y, n_perm=20, max_n=1001)
    assert torch.equal(M.DataSample(y).x, M.DataSample(y, max_n=1000, seed=0).x)
    assert M.DataSample(y).two_sample_tests(x) == M.DataSample(y).two_sample_tests(x, n_perm=200, seed=0)
    near = samples[:6] + 0.25            # close to y: a p-value that moves with the permutations' seed
    assert M.DataSample(y).two_sample_tests(near, n_perm=20) != M.DataSample(y).two_sample_tests(near, n_perm=20, seed=1)
    real = torch.randn(2100, 4, generator=gen(16))                        # above max_real: subsampled
    fake = torch.randn(40, 4, generator=gen(17))
    assert M.knn_precision_recall(real, fake) == M.knn_precision_recall(real, fake, k=5, max_real=2000, seed=0)
    assert M.knn_precision_recall(real, fake) != M.knn_precision_recall(real, fake, seed=1)
    assert M.DataSample(samples[:30]).knn_precision_recall(samples[30:40]) == \
        M.DataSample(samples[:30]).knn_precision_recall(samples[30:40], k=5)
    big = torch.randn(5000, 24, generator=gen(12))      # 500 tokens: any two seeds' 100,000 pairs share the top ones
    assert M.collapse_threshold(big) == M.collapse_threshold(big, quantile=0.999, n_pairs=100_000, seed=0)
    assert M.collapse_threshold(big) != M.collapse_threshold(big, seed=1)
    many = torch.randn(5200, 24, generator=gen(13))     # above max_n and 20 columns: subsampled, randomized route
    assert torch.equal(M.pca_2d(many)["components"], M.pca_2d(many, max_n=5000, seed=0)["components"])
    assert not torch.equal(M.pca_2d(many)["components"], M.pca_2d(many, seed=1)["components"])
    walk, cloud = torch.randn(12, 24, generator=gen(14)).cumsum(0), torch.randn(300, 24, generator=gen(15))
    assert M.trajectory_against_data(walk, cloud) == \
        M.trajectory_against_data(walk, cloud, n_perm=200, walk_pairs=4096, seed=0)
    assert M.vocab_neighbours(vocab[:3], vocab)["topk_ids"] == M.vocab_neighbours(vocab[:3], vocab, k=5)["topk_ids"]
    assert M.DataSample(samples).n == 800 and M.DataSample(torch.cat([samples, samples])).n == 1000
    assert M.DataGaussian(samples.mean(0), torch.cov(samples.T)).radius() == \
        M.DataGaussian(samples.mean(0), torch.cov(samples.T)).radius(0.99)


def test_the_region_radius_is_empirical_from_ten_samples(data):
    samples, _ = data
    mean, cov = samples.mean(0), torch.cov(samples.T)
    assert M.DataGaussian(mean, cov, samples[:10]).radius()[1] == "empirical"
    assert M.DataGaussian(mean, cov, samples[:9]).radius()[1] == "chi2"
    g = M.DataGaussian(mean, cov, samples[:10], shrinkage=0.1)
    near = g.mahalanobis(samples[:10]).sort().values
    radius, _ = g.radius(0.5)
    inside = M.region_position(torch.cat([samples[:10], mean[None]]), g, quantile=0.5)
    assert inside["inside_share"] == pytest.approx(float(((near <= radius).sum() + 1) / 11))
    on_edge = samples[:10][g.mahalanobis(samples[:10]).argsort()[4]][None]
    assert M.region_position(on_edge, g, quantile=0.0)["inside_share"] == 0.0  # beyond the smallest distance
    assert set(inside) == {"maha_mean", "maha_rel", "inside_share", "radius", "radius_kind"}


def test_vocab_neighbours_chunks_arrays_and_small_vocabularies(vocab):
    x = vocab[[7, 130, 260]] + 0.01
    whole = M.vocab_neighbours(x, vocab, k=4, chunk=10_000)
    for chunk in (1, 3, 128, 257):
        assert M.vocab_neighbours(x, vocab.numpy(), k=4, chunk=chunk)["topk_ids"] == whole["topk_ids"], chunk
    assert whole["nearest"] == [7, 130, 260]
    tiny = M.vocab_neighbours(x, vocab[:3], k=9)
    assert len(tiny["topk_ids"][0]) == 3 and all(c > -1.01 for row in tiny["topk_cos"] for c in row)
    flat = M.vocab_neighbours(x.reshape(3, 2, 12), vocab[:, :12], k=0)
    assert len(flat["nearest"]) == 6 and len(flat["topk_ids"][0]) == 1  # rows of the last dimension; k at least 1
    highest, lowest = max(whole["max_cos"]), min(whole["max_cos"])
    assert M.vocab_neighbours(x, vocab, threshold=highest)["collapsed_share"] == 0.0  # strictly above the threshold
    assert M.vocab_neighbours(x, vocab, threshold=lowest)["collapsed_share"] == pytest.approx(2 / 3)
    assert math.isnan(whole["collapsed_share"]) and whole["max_cos_mean"] == pytest.approx(np.mean(whole["max_cos"]))
    kept = M.vocab_neighbours(x, vocab, k=3, prior=vocab[[7, 131, 260]], chunk=50)
    assert kept["nn_kept"] == [True, False, True] and kept["nn_kept_share"] == pytest.approx(2 / 3)
    assert math.isnan(M.vocab_neighbours(x[:0], vocab, prior=x[:0])["nn_kept_share"])


# ---- what mutation testing found unchecked (benchmarks/results/mutation.md) ---------------------------

def test_vocabulary_inputs_may_be_parameters_or_nested_lists(vocab):
    """A model's embedding matrix is a Parameter that requires grad (numpy cannot read it), and plain nested lists
    have no .shape: every function that takes a vocabulary or reference reads both."""
    param = torch.nn.Parameter(vocab.clone())
    listed = vocab.tolist()
    x = torch.randn(6, 24, generator=gen(9))
    for given in (param, listed):
        assert M.collapse_threshold(given, n_pairs=2000) == pytest.approx(M.collapse_threshold(vocab, n_pairs=2000))
        assert M.vocab_neighbours(x, given, k=3)["topk_ids"] == M.vocab_neighbours(x, vocab, k=3)["topk_ids"]
        assert M.norm_position(x, given)["norm_pctile"] == pytest.approx(M.norm_position(x, vocab)["norm_pctile"])
        fitted = M.pca_2d(given)
        torch.testing.assert_close(fitted["components"].abs(), M.pca_2d(vocab)["components"].abs())


def test_pca_2d_small_inputs_and_scale():
    """Two rows already have a first component (their difference); one row has none, but its result still projects
    (float64 components beside the float64 mean). The explained shares do not depend on the data's scale."""
    two = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    fitted = M.pca_2d(two)
    torch.testing.assert_close(fitted["components"][0].abs(), torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    assert fitted["explained"] == pytest.approx([1.0, 0.0], abs=1e-12)
    one = M.pca_2d(torch.ones(1, 3))
    assert set(one) == {"mean", "components", "explained"} and len(one["explained"]) == 2
    assert all(math.isnan(v) for v in one["explained"])
    projected = (torch.ones(1, 3, dtype=torch.float64) - one["mean"]) @ one["components"].T
    assert projected.shape == (1, 2)
    x = torch.randn(50, 5, generator=gen(3)).double() * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    assert M.pca_2d(x * 1e-4)["explained"] == pytest.approx(M.pca_2d(x)["explained"], rel=1e-9)


def test_pca_2d_randomized_route_is_seeded():
    """Above 20 rows and columns the components come from a seeded randomized subspace iteration: the same call
    gives bitwise the same result, and it agrees with an exact SVD."""
    x = torch.randn(300, 40, generator=gen(5)) * torch.cat([torch.tensor([10.0, 5.0]), torch.linspace(1.0, 0.1, 38)])
    first, again = M.pca_2d(x), M.pca_2d(x)
    assert torch.equal(first["components"], again["components"])
    exact = torch.linalg.svd(x.double() - x.double().mean(0), full_matrices=False).Vh[:2]
    torch.testing.assert_close(first["components"].abs(), exact.abs(), atol=1e-8, rtol=0)


def test_nc1_uses_each_class_own_rows():
    """Three classes of different spreads and sizes against the formula written out."""
    g = gen(7)
    parts = [torch.randn(n, 4, generator=g) * s + c for n, s, c in ((5, 0.1, 0.0), (9, 2.0, 5.0), (7, 0.7, -4.0))]
    x = torch.cat(parts).double()
    labels = [0] * 5 + [1] * 9 + [2] * 7
    means = torch.stack([p.double().mean(0) for p in parts])
    within = torch.stack([((p.double() - p.double().mean(0)) ** 2).sum(1).mean() for p in parts]).mean()
    between = ((means - means.mean(0)) ** 2).sum(1).mean()
    assert M.nc1(x, labels) == pytest.approx((within / between).item(), rel=1e-12)


def test_trajectory_measures_from_two_points_and_at_any_scale():
    """Two states are a trajectory (one step; both orders have that step, so the order p is 1); two data tokens are
    a data cloud; and the ratios do not depend on the units (data at 1e-3 scale, walks shorter than 1)."""
    states = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    data = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    out = M.trajectory_against_data(states, data, n_perm=20)
    assert out["mean_step"] == pytest.approx(1.0) and out["walk_step"] == pytest.approx(2.0)
    assert out["step_ratio"] == pytest.approx(0.5) and out["spread_ratio"] == pytest.approx(0.5)
    assert out["order_p"] == 1.0
    g = gen(8)
    walk, cloud = torch.randn(30, 6, generator=g).double().cumsum(0), torch.randn(200, 6, generator=g).double() * 3
    big, small = (M.trajectory_against_data(walk * s, cloud * s, n_perm=50) for s in (1.0, 1e-3))
    for key in ("step_ratio", "spread_ratio", "order_p"):
        assert small[key] == pytest.approx(big[key], rel=1e-9), key


def _cov_with_eigenvalues(values, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=gen(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T


def test_data_gaussian_ridge_starts_tiny_and_grows_a_hundredfold():
    """Unshrunk, a positive definite covariance is used as it is (a ridge of 1e-10 of its mean variance); one that
    is not (an eigenvalue of −1e-3) gets the first ridge that factors it, 1e-10 × 100⁴ of the mean variance; one
    that six tries cannot factor (an eigenvalue below minus the mean variance) is refused."""
    x = torch.randn(7, 5, generator=gen(11), dtype=torch.float64)
    good = _cov_with_eigenvalues([4.0, 2.0, 1.0, 0.5, 0.25])
    bad = _cov_with_eigenvalues([1.0, 1.0, 1.0, 1.0, -1e-3])
    fixed = bad + 1e-2 * float(bad.diagonal().mean()) * torch.eye(5, dtype=torch.float64)
    for given, factored in ((good, good), (bad, fixed)):
        want = torch.linalg.solve(factored, x.T).T.mul(x).sum(1).sqrt()
        torch.testing.assert_close(M.DataGaussian(torch.zeros(5), given, shrinkage=0.0).mahalanobis(x), want,
                                   rtol=1e-9, atol=0)
    with pytest.raises(torch.linalg.LinAlgError):
        M.DataGaussian(torch.zeros(5), _cov_with_eigenvalues([1.0, 1.0, 1.0, 1.0, -3.0]), shrinkage=0.0)


def test_knn_measures_without_neighbours_are_named_and_nan(data):
    """One data point has no k-th neighbour, and no generated points give no share: every measure is there, NaN."""
    samples, _ = data
    for real, fake in ((samples[:1], samples[1:5]), (samples[:30], samples[:0])):
        out = M.DataSample(real).knn_precision_recall(fake)
        assert set(out) == {"precision", "recall", "density", "coverage"}
        assert all(math.isnan(v) for v in out.values())


def test_two_sample_tests_from_two_points_each_count_ties_and_are_scale_free():
    """Two points on each side can be tested. When x and y are the same two points, every permutation is at least
    as extreme as the observed split (a tie or the separated split), so p = 1: the first permutation and exact ties
    both count. The bandwidth follows the data's scale (distances far below 1), and the statistics with it."""
    x = torch.tensor([[0.0], [10.0]])
    mmd, energy = M.mmd_rbf(x, x.clone(), n_perm=20), M.energy_distance(x, x.clone(), n_perm=20)
    assert mmd["p"] == 1.0 and energy["p"] == 1.0 and math.isfinite(mmd["mmd2"]) and math.isfinite(energy["energy"])
    a, b = torch.randn(8, 3, generator=gen(18)).double(), torch.randn(9, 3, generator=gen(19)).double() + 1
    big, small = M.mmd_rbf(a, b, n_perm=30), M.mmd_rbf(a * 1e-3, b * 1e-3, n_perm=30)
    assert small["bandwidth"] == pytest.approx(big["bandwidth"] * 1e-3, rel=1e-9)
    assert small["mmd2"] == pytest.approx(big["mmd2"], rel=1e-9) and small["p"] == big["p"]


def test_tsne_2d_caps_the_perplexity_at_a_third_of_the_other_rows():
    """perplexity = min(30, max(2, (n − 1) / 3)): 2 at 7 rows, 3 at 10, 30 at 100; the map equals scikit-learn's at
    that value."""
    from sklearn.manifold import TSNE

    x = torch.randn(100, 4, generator=gen(20), dtype=torch.float64)
    for n, perplexity in ((7, 2.0), (10, 3.0), (100, 30.0)):
        want = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(x[:n].numpy())
        torch.testing.assert_close(M.tsne_2d(x[:n]), torch.from_numpy(want).double())


def naive_silhouette(x: torch.Tensor, labels) -> float:
    """Rousseeuw's definition point by point (s = 0 for a point alone in its cluster)."""
    scores = []
    for i, own in enumerate(labels):
        dist = {c: [float((x[i] - x[j]).norm()) for j, cj in enumerate(labels) if cj == c and j != i]
                for c in set(labels)}
        if not dist[own]:
            scores.append(0.0)
            continue
        a = sum(dist[own]) / len(dist[own])
        b = min(sum(d) / len(d) for c, d in dist.items() if c != own)
        scores.append((b - a) / max(a, b))
    return sum(scores) / len(scores)


def test_silhouette_of_a_two_point_cluster_averages_over_its_one_neighbour():
    # a two-point cluster's a is the distance to its single neighbour (divided by 2 − 1, not clamped to 2),
    # and its points score (they are not alone, as a singleton is)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 1.0], [13.0, 0.0], [30.0, 5.0]], dtype=torch.float64)
    labels = ["a", "a", "b", "b", "b", "c"]
    assert M.silhouette(x, labels) == pytest.approx(naive_silhouette(x, labels), rel=1e-12)
    assert M.silhouette(x[:5], labels[:5]) == pytest.approx(naive_silhouette(x[:5], labels[:5]), rel=1e-12)


def test_silhouette_takes_labels_in_the_rows_own_shape():
    # runs × slots vectors with runs × slots labels: numpy's inverse codes keep the labels' 2-D shape
    g = gen(21)
    x = torch.cat([torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g) + 3])
    labels = np.array([0] * 6 + [1] * 6)
    flat = M.silhouette(x, labels)
    assert M.silhouette(x.reshape(2, 6, 3), labels.reshape(2, 6)) == pytest.approx(flat, rel=1e-12)
    dist = torch.cdist(x.double(), x.double())
    assert M.silhouette_from_distances(dist, labels.reshape(3, 4)) == pytest.approx(flat, rel=1e-12)


def test_metrics_take_a_list_of_row_tensors():
    # per-run vectors collected in a Python list are read as rows, like the stacked tensor
    g = gen(22)
    x = torch.randn(9, 5, generator=g)
    rows = list(x)
    assert M.participation_ratio(rows) == pytest.approx(M.participation_ratio(x), rel=1e-12)
    assert M.mean_pairwise_cosine(rows) == pytest.approx(M.mean_pairwise_cosine(x), rel=1e-12)
