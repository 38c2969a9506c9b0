"""The closed-form checks behind the local-rate and standardization experiments."""
import math

import pytest
import torch
from torch.nn import functional as F

from precond.data import synthetic
from precond.local_rate import gd_rate, jacobi_P
from precond.models import linear
from precond.normalization import extended_gram_kappas


def _problem(decades=1.0):
    data = synthetic(n_train=256, n_val=8, n_test=0, features=6, scale_decades=decades).to("cpu", torch.float64)
    torch.manual_seed(0)
    return linear(data.in_shape, 1).double(), data.x_train, data.y_train


def test_gd_rate_uses_the_closed_form_hessian_of_least_squares_and_observes_the_predicted_rate():
    model, x, y = _problem()
    result = gd_rate(model, F.mse_loss, x, y, None, "gd")
    ext = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    eig = torch.linalg.eigvalsh(2.0 * ext.T @ ext / x.shape[0])  # H of mean squared error, by hand
    kappa = float(eig[-1] / eig[0])
    assert result.kappa_p == pytest.approx(kappa, rel=1e-9)
    assert result.step == pytest.approx(2.0 / float(eig[-1] + eig[0]), rel=1e-9)
    assert result.predicted == pytest.approx((kappa - 1) / (kappa + 1), rel=1e-12)
    assert result.exponent_error < 0.01


def test_a_diagonal_preconditioner_changes_the_rate_to_that_of_its_kappa():
    model, x, y = _problem(decades=2.0)
    P = jacobi_P(model, F.mse_loss, x, y)
    plain, jacobi = gd_rate(model, F.mse_loss, x, y, None, "gd"), gd_rate(_problem(2.0)[0], F.mse_loss, x, y, P, "j")
    assert jacobi.kappa_z < plain.kappa_z / 100  # scales over 2 decades: κ drops by ~10^4
    assert jacobi.exponent_error < 0.05 and jacobi.steps < plain.steps / 100
    # −log ρ ≈ 2/κ for large κ: plain GD's measured exponent matches its κ
    assert -math.log(plain.observed) == pytest.approx(2 / plain.kappa_z, rel=0.01)


def test_standardized_gram_kappa_equals_the_correlation_matrix_kappa():
    x = synthetic(scale_decades=2.0, mean_offset=1.0, correlation=0.5, features=8).x_train
    x = torch.cat([x, torch.full((x.shape[0], 1), 3.0)], dim=1)  # a constant feature: centred to zero
    k = extended_gram_kappas(x)
    assert k["constant_features"] == 1
    assert k["kappa_standardized"] == pytest.approx(k["kappa_correlation"], rel=1e-10)
    # population correlation (1−ρ)I + ρ11ᵀ has eigenvalues 1+7ρ and 1−ρ: κ = 4.5/0.5 = 9 (sample ≈ 9)
    assert k["kappa_correlation"] == pytest.approx(9.0, rel=0.1)
    assert k["kappa_raw"] > 100 * k["kappa_standardized"]
