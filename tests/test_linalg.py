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
