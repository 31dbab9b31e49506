"""eptk.linalg: the one implementation of Gaussian fitting, shrinkage, PSD Cholesky, whitening and
Mahalanobis distances that statistics, priors and metrics share."""
import pytest
import torch

from eptk import linalg


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def data():
    g = gen(2)
    mixing = torch.randn(16, 16, generator=g) / 4 + torch.eye(16)
    return torch.randn(800, 16, generator=g) @ mixing + 3.0


def test_ledoit_wolf_matches_sklearn(data):
    sklearn = pytest.importorskip("sklearn.covariance")
    assert linalg.ledoit_wolf_shrinkage(data) == pytest.approx(sklearn.ledoit_wolf_shrinkage(data.numpy()), rel=1e-4)


def test_streamed_and_sample_ledoit_wolf_agree_on_the_same_points(data):
    """The statistics' estimator (S from sums, fourth moment from a sample) is the sample estimator when the
    sample is every point and S their biased covariance."""
    x = data.double()
    centred = x - x.mean(0)
    biased = centred.T @ centred / x.shape[0]
    assert linalg.covariance_shrinkage(biased, x.shape[0], x.mean(0), x) == pytest.approx(
        linalg.ledoit_wolf_shrinkage(x), rel=1e-10)


def test_shrink_keeps_the_trace_and_zero_becomes_a_tiny_identity(data):
    S = torch.cov(data.double().T)
    shrunk = linalg.shrink(S, 0.3)
    assert torch.allclose(shrunk.trace(), S.trace())
    torch.testing.assert_close(shrunk - 0.7 * S, 0.3 * S.diagonal().mean() * torch.eye(16, dtype=torch.float64))
    assert torch.equal(linalg.shrink(torch.zeros(3, 3), 0.5), torch.eye(3, dtype=torch.float64) * 1e-12)


def test_fit_gaussian_is_the_sample_mean_and_unbiased_covariance(data):
    mean, cov = linalg.fit_gaussian(data)
    torch.testing.assert_close(mean, data.mean(0))
    torch.testing.assert_close(cov, torch.cov(data.T), rtol=1e-5, atol=1e-6)


def test_whitening_and_mahalanobis(data):
    x = data.double()
    mean, cov = x.mean(0), torch.cov(x.T)
    tril = linalg.psd_cholesky(cov, ridge=1e-12)
    z = linalg.whiten(x, tril, mean)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-4)
    diff = x[:7] - mean
    want = ((diff @ torch.linalg.inv(cov)) * diff).sum(1).sqrt()
    torch.testing.assert_close(linalg.mahalanobis(x[:7], tril, mean), want, rtol=1e-5, atol=1e-6)
    assert linalg.mahalanobis(x[:2].reshape(1, 2, 16), tril, mean).shape == (1, 2)


def test_psd_cholesky_adds_a_ridge_to_a_singular_covariance_and_names_its_failure():
    x = torch.randn(3, 8, generator=gen(1), dtype=torch.float64)
    singular = x.T @ x                                           # rank 3 in 8 dimensions
    tril = linalg.psd_cholesky(singular)
    assert torch.allclose(tril @ tril.T, singular, atol=1e-4 * float(singular.diagonal().mean()))
    with pytest.raises(ValueError, match="not positive definite"):
        linalg.psd_cholesky(torch.full((4, 4), float("nan"), dtype=torch.float64), error=ValueError)


# ---- the contracts mutation testing found unchecked (benchmarks/results/mutation.md) --------------------------

def test_ledoit_wolf_is_sklearns_to_rounding_at_every_sample_size(data):
    """float64 throughout (a float32 input is upcast first, so it gives the float64 answer); fewer than two
    points give δ = 1."""
    sklearn = pytest.importorskip("sklearn.covariance")
    x = data.double()
    assert linalg.ledoit_wolf_shrinkage(x) == pytest.approx(sklearn.ledoit_wolf_shrinkage(x.numpy()), rel=1e-12)
    assert linalg.ledoit_wolf_shrinkage(data) == pytest.approx(linalg.ledoit_wolf_shrinkage(x), rel=1e-13)
    for n in (2, 3, 5):
        rows = torch.randn(n, 3, generator=gen(n), dtype=torch.float64)
        assert linalg.ledoit_wolf_shrinkage(rows) == pytest.approx(sklearn.ledoit_wolf_shrinkage(rows.numpy()),
                                                                   rel=1e-12, abs=1e-15), n
    assert linalg.ledoit_wolf_shrinkage(x[:1]) == 1.0


def explicit_ledoit_wolf(cov, n, centred):
    """The docstring's δ, with each row's d×d matrix formed: min(mean‖x xᵀ − S‖²_F / max(n, 1), ‖S − μI‖²_F) / ‖S − μI‖²_F."""
    S = cov.double()
    target = S.diagonal().mean() * torch.eye(S.shape[0], dtype=torch.float64)
    dist2 = float((S - target).pow(2).sum())
    spread = float(torch.stack([(torch.outer(r, r) - S).pow(2).sum() for r in centred.double()]).mean())
    return min(max(spread / max(n, 1.0), 0.0), dist2) / dist2


@pytest.mark.parametrize("n", [0.5, 1, 3, 40, 1e6])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_ledoit_wolf_intensity_is_its_formula(data, n, scale):
    """At small and large scales (the clamps and the zero test must not depend on the data's units) and for
    counts below, at and above one."""
    x = data.double()[:50] * scale
    centred = x - x.mean(0)
    cov = centred.T @ centred / 50
    got = linalg.ledoit_wolf_intensity(cov, n, centred)
    assert got == pytest.approx(explicit_ledoit_wolf(cov, n, centred), rel=1e-12)
    assert linalg.ledoit_wolf_intensity(cov.float(), n, centred.float()) == pytest.approx(
        explicit_ledoit_wolf(cov.float(), n, centred.float()), rel=1e-12)  # float32 input, float64 arithmetic


def test_ledoit_wolf_intensity_of_a_scaled_identity_is_one():
    """S = μI is its own target (‖S − μI‖ = 0): δ = 1 whatever the scale, without dividing by zero."""
    for mu in (1e-4, 0.5, 7.0):
        x = torch.randn(10, 4, generator=gen(3), dtype=torch.float64)
        assert linalg.ledoit_wolf_intensity(mu * torch.eye(4, dtype=torch.float64), 10, x) == 1.0


def explicit_oas(cov, n):
    """Chen et al. (2010), eq. 23: ((1 − 2/d) tr(S²) + tr²(S)) / ((n + 1 − 2/d)(tr(S²) − tr²(S)/d)), at most 1."""
    S = cov.double()
    d = S.shape[0]
    tr, tr_s2 = float(torch.trace(S)), float(torch.trace(S @ S))
    return min(((1 - 2 / d) * tr_s2 + tr ** 2) / ((n + 1 - 2 / d) * (tr_s2 - tr ** 2 / d)), 1.0)


def test_oas_intensity_is_its_formula(data):
    cov = torch.cov(data.double().T)
    for n in (20, 800, 1e5):
        assert linalg.oas_intensity(cov, n) == pytest.approx(explicit_oas(cov, n), rel=1e-12), n
    assert linalg.oas_intensity(cov.float(), 800) == pytest.approx(explicit_oas(cov.float(), 800), rel=1e-12)
    assert linalg.oas_intensity(cov, 2) == 1.0                        # few points: the formula passes 1, capped
    assert linalg.oas_intensity(cov, 0) == linalg.oas_intensity(cov, 1)  # a count below one counts as one
    assert linalg.oas_intensity(3.0 * torch.eye(5, dtype=torch.float64), 100) == 1.0  # zero denominator


def test_covariance_shrinkage_chooses_its_estimator(data):
    """Ledoit–Wolf from the samples (centred on the given mean, else on their own), OAS without samples or with
    an empty sample; never below 1e-3 when the count does not exceed the dimension."""
    x = data.double()
    cov = torch.cov(x.T, correction=0)
    sample = x[:100]
    mean = x.mean(0)
    assert linalg.covariance_shrinkage(cov, 800, mean, sample) == pytest.approx(
        explicit_ledoit_wolf(cov, 800, sample - mean), rel=1e-12)
    assert linalg.covariance_shrinkage(cov, 800, None, sample) == pytest.approx(
        explicit_ledoit_wolf(cov, 800, sample - sample.mean(0)), rel=1e-12)
    assert linalg.covariance_shrinkage(cov, 800, None, sample.float()) == pytest.approx(
        explicit_ledoit_wolf(cov, 800, sample - sample.mean(0)), rel=1e-12)  # centred in float64
    assert linalg.covariance_shrinkage(cov, 800, mean, sample[:1]) == pytest.approx(
        explicit_ledoit_wolf(cov, 800, sample[:1] - mean), rel=1e-12)      # one sampled row is a sample
    assert linalg.covariance_shrinkage(cov, 800) == pytest.approx(explicit_oas(cov, 800), rel=1e-12)
    assert linalg.covariance_shrinkage(cov, 800, mean, x[:0]) == pytest.approx(explicit_oas(cov, 800), rel=1e-12)
    # rows that each equal S (x xᵀ = S): no spread, δ = 0, raised to 1e-3 while the count is at most d
    v = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    rows, S = torch.stack([v, -v]), torch.outer(v, v)
    assert linalg.covariance_shrinkage(S, 5, torch.zeros(4, dtype=torch.float64), rows) == 0.0
    for count in (2, 4):
        assert linalg.covariance_shrinkage(S, count, torch.zeros(4, dtype=torch.float64), rows) == 1e-3


def test_shrink_computes_in_float64_at_any_scale(data):
    S = torch.cov(data.double().T) * 1e-3                                 # a trace per dimension below one
    want = 0.8 * S + 0.2 * float(S.diagonal().mean()) * torch.eye(16, dtype=torch.float64)
    got = linalg.shrink(S.float(), 0.2)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, 0.8 * S.float().double() + 0.2 * float(S.float().double().diagonal().mean())
                               * torch.eye(16, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(linalg.shrink(S, 0.2), want, rtol=1e-14, atol=0)


def test_fit_gaussian_of_two_rows_divides_by_one():
    rows = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    mean, cov = linalg.fit_gaussian(rows)
    torch.testing.assert_close(mean, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(cov, torch.tensor([[2.0, 4.0], [4.0, 8.0]]))
    assert torch.equal(linalg.fit_gaussian(rows[:1])[1], torch.zeros(2, 2))  # one row: no spread, no division by 0


def test_psd_cholesky_ridge_is_relative_to_the_trace_and_grows_tenfold():
    """The first ridge is 1e-6 × (tr cov / d), at any scale of cov (below one too); each failed try multiplies it
    by 10; the default gives up after 8 tries (ridge up to 10 × tr cov / d) with the one message."""
    x = torch.randn(3, 6, generator=gen(4), dtype=torch.float64)
    for scale in (1e-3, 1e4):
        singular = scale * (x.T @ x)                                   # PSD, rank 3: the first ridge suffices
        tril = linalg.psd_cholesky(singular)
        added = (tril @ tril.T - singular).diagonal()
        torch.testing.assert_close(added, torch.full((6,), 1e-6 * float(singular.diagonal().mean()),
                                                     dtype=torch.float64), rtol=1e-4, atol=0)
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, -3e-6], dtype=torch.float64))  # needs the 2nd ridge
    tril = linalg.psd_cholesky(indefinite)
    mean_diag = float(indefinite.diagonal().mean())
    torch.testing.assert_close((tril @ tril.T - indefinite).diagonal(),
                               torch.full((4,), 1e-5 * mean_diag, dtype=torch.float64), rtol=1e-9, atol=0)
    ninth = torch.diag(torch.tensor([1.0, 1.0, 1.0, -2.5], dtype=torch.float64))  # mean 1/8: ridge 1e-6·10^8/8
    with pytest.raises(torch.linalg.LinAlgError) as refused:
        linalg.psd_cholesky(ninth)
    assert str(refused.value) == "covariance is not positive definite even with a ridge"
    assert linalg.psd_cholesky(ninth, tries=9).shape == (4, 4)


def test_whiten_follows_the_input_device_and_dtype(data):
    """The factor and the mean move to x's device and dtype (meta tensors stand for another device here)."""
    x = data.double()
    mean, tril = x.mean(0), linalg.psd_cholesky(torch.cov(x.T))
    assert linalg.whiten(x.to("meta"), tril, mean).device.type == "meta"
    z32 = linalg.whiten(data, tril, mean)                               # float64 factor and mean, float32 rows
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32, linalg.whiten(x, tril, mean).float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linalg.whiten(x, tril), linalg.whiten(x, tril, torch.zeros(16, dtype=torch.float64)))


def test_sqrtm_psd_squares_back_and_clips_rounding_negatives():
    a = torch.randn(5, 5, generator=gen(5), dtype=torch.float64)
    c = a @ a.T
    root = linalg.sqrtm_psd(c)
    torch.testing.assert_close(root, root.T)
    torch.testing.assert_close(root @ root, c)
    skewed = c + 1e-9 * torch.triu(torch.ones(5, 5, dtype=torch.float64), 1)  # symmetrized first
    torch.testing.assert_close(linalg.sqrtm_psd(skewed), linalg.sqrtm_psd((skewed + skewed.T) / 2), rtol=0, atol=0)
    v = torch.tensor([3.0, 4.0], dtype=torch.float64) / 5
    tilted = 4.0 * torch.outer(v, v) - 1e-10 * torch.eye(2, dtype=torch.float64)  # eigenvalues 4 - ε, -ε
    torch.testing.assert_close(linalg.sqrtm_psd(tilted), 2.0 * torch.outer(v, v), rtol=0, atol=1e-6)
    assert not linalg.sqrtm_psd(tilted).isnan().any()


def test_ledoit_wolf_divides_by_the_count_down_to_one():
    """n = 1 divides the spread by 1 (only counts below one are raised to one), shown where δ is not capped."""
    S = torch.diag(torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64))
    x = torch.tensor([[2.0, 0.5, 0.0]], dtype=torch.float64)          # x xᵀ − S has ‖·‖² = 2.0625
    dist2 = float((S - 4 / 3 * torch.eye(3, dtype=torch.float64)).pow(2).sum())
    assert linalg.ledoit_wolf_intensity(S, 1, x) == pytest.approx(2.0625 / dist2, rel=1e-12)
    assert linalg.ledoit_wolf_intensity(S, 1.5, x) == pytest.approx(2.0625 / 1.5 / dist2, rel=1e-12)


def test_oas_counts_from_one_and_is_scale_free(data):
    """A rank-one S in 4 dimensions: δ = 2 / (n + 1 − 2/d), capped at 1: 1 at n = 1 (counts below one count as
    one, not two), 0.8 at n = 2. The intensity does not depend on the data's units."""
    v = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=torch.float64)
    S = torch.outer(v, v)
    assert linalg.oas_intensity(S, 1) == 1.0 and linalg.oas_intensity(S, 0.5) == 1.0
    assert linalg.oas_intensity(S, 1.5) == pytest.approx(2 / 2.0, rel=1e-12)
    assert linalg.oas_intensity(S, 2) == pytest.approx(2 / 2.5, rel=1e-12)
    cov = torch.cov(data.double().T)
    for scale in (1e-6, 1e-2, 1e3):
        assert linalg.oas_intensity(cov * scale, 800) == pytest.approx(explicit_oas(cov, 800), rel=1e-9), scale
