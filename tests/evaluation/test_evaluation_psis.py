"""Tests of pyro_nfvi.evaluation.psis: Pareto smoothing and k-hat of log weights, against arviz itself."""
import arviz as az
import numpy as np
import pytest
import torch

from pyro_nfvi.evaluation.psis import MIN_PSIS_DRAWS, check_psis_draws, pareto_khat, psislw


def _heavy_tailed_log_weights(num_draws, num_points, seed=0):
    """log w = log N(z | 0, 1) - log N(z | 0, s^2), z ~ N(0, s^2): true Pareto shape 1 - s^2 per column."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.linspace(0.4, 1.2, num_points, dtype=torch.float64)
    z = torch.randn(num_draws, num_points, generator=gen, dtype=torch.float64) * s
    return torch.distributions.Normal(0.0, 1.0).log_prob(z) - torch.distributions.Normal(0.0, s).log_prob(z), s


def test_pareto_khat_equals_arviz_per_column_and_does_not_depend_on_the_block_size():
    lw, s = _heavy_tailed_log_weights(3000, 7)
    expected = az.psislw(lw.T.numpy())[1]
    for block_size in (1, 3, 7, 100):
        khat = pareto_khat(lw, block_size=block_size)
        assert khat.dtype == torch.float64 and khat.shape == (7,)
        np.testing.assert_array_equal(khat.numpy(), expected)
    # the estimates follow the true shape 1 - s^2 where it is positive (heavy tails)
    heavy = s < 0.8
    assert (khat[heavy] - (1 - s[heavy] ** 2)).abs().max() < 0.2, (khat, 1 - s**2)
    one = pareto_khat(lw[:, 0])
    assert one.shape == () and one.item() == expected[0]
    float32 = pareto_khat(lw.float())  # any dtype: converted to float64 for arviz
    np.testing.assert_allclose(float32.numpy(), expected, atol=1e-3)


def test_psislw_smooths_and_normalises_like_arviz():
    lw, _ = _heavy_tailed_log_weights(500, 3, seed=1)
    smoothed, khat = psislw(lw.T.numpy())
    ref_lw, ref_k = az.psislw(lw.T.numpy())
    np.testing.assert_array_equal(khat, ref_k)
    np.testing.assert_allclose(smoothed, ref_lw)
    np.testing.assert_allclose(np.exp(smoothed).sum(-1), 1.0, rtol=1e-12)
    assert not np.allclose(smoothed, lw.T.numpy() - np.log(np.exp(lw.T.numpy()).sum(-1, keepdims=True)))
    _, reff_k = psislw(lw.T.numpy(), reff=0.5)  # reff changes the tail length, so the fit
    assert not np.array_equal(reff_k, khat)


def test_too_few_draws_and_bad_shapes_raise():
    assert MIN_PSIS_DRAWS == 21
    lw, _ = _heavy_tailed_log_weights(MIN_PSIS_DRAWS, 2)
    assert np.isfinite(pareto_khat(lw).numpy()).all()
    assert np.isinf(az.psislw(lw[:-1].T.numpy())[1]).all()  # why 21: arviz gives up below it
    with pytest.raises(ValueError, match=r"number of draws \(log_weights.shape\[0\]\) must be an integer >= 21"):
        pareto_khat(lw[:-1])
    with pytest.raises(ValueError, match=r"shape \(S,\) or \(S, B\)"):
        pareto_khat(lw[..., None])
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        pareto_khat(lw, block_size=0)
    with pytest.raises(ValueError, match="reff must be a positive finite number"):
        psislw(lw.T.numpy(), reff=0.0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 21"):
        check_psis_draws("num_samples", True)
    assert check_psis_draws("num_samples", 21) == 21
