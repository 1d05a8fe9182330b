"""``pyro_nfvi.transforms.jacobian``: closed-form chains against autograd, and the autograd fallback."""
import pytest
import torch
from pyro.distributions.transforms import LowerCholeskyAffine
from torch.distributions.transforms import AffineTransform, ComposeTransform

from pyro_nfvi.transforms import AffineCoupling, SinhArcsinh, flow
from pyro_nfvi.transforms.jacobian import (
    autograd_jacobian,
    chain_jacobian,
    chain_jacobian_and_log_det_grad,
    closed_form_jacobian,
    jacobian_factors,
    push_score,
)

F64 = torch.float64


def randomized(module, scale=0.4):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p) / max(p.shape[-1] if p.dim() else 1, 1) ** 0.5)
    return module.to(F64)


def the_chain(dim):
    torch.manual_seed(0)
    tril = torch.randn(dim, dim, dtype=F64).tril(-1) + torch.diag(torch.rand(dim, dtype=F64) + 0.5)
    return [
        randomized(SinhArcsinh(dim)),
        AffineTransform(torch.randn(dim, dtype=F64), torch.rand(dim, dtype=F64) + 0.5, event_dim=1),
        randomized(flow("iaf", dim, 3)),
        LowerCholeskyAffine(torch.randn(dim, dtype=F64), tril),
    ]


def inputs_of(transforms, x):
    out = []
    for t in transforms:
        out.append(x)
        x = t(x)
    return out, x


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_chain_of_closed_forms_equals_autograd(batch):
    """The chain's Jacobian and log-determinant gradient from closed forms, against autograd in float64."""
    dim = 6
    chain = the_chain(dim)
    x = torch.randn(batch + (dim,), dtype=F64, requires_grad=True)
    inputs, u = inputs_of(chain, x)
    jac = chain_jacobian(chain, inputs)
    assert jac.shape == batch + (dim, dim) and not jac.requires_grad
    assert torch.allclose(jac, autograd_jacobian(u, x), atol=1e-10)
    composed = closed_form_jacobian(ComposeTransform(chain), x.detach())
    assert torch.allclose(composed, jac, atol=1e-12)
    # d/dx sum_k log|det J_k| of the chain, from the closed forms
    ladj = sum(t.log_abs_det_jacobian(i, o) for t, i, o in zip(chain, inputs, inputs[1:] + [u]))
    same_jac, grad = chain_jacobian_and_log_det_grad(chain, inputs)
    assert grad.shape == batch + (dim,) and not grad.requires_grad
    assert torch.allclose(same_jac, jac, atol=1e-12)
    assert torch.allclose(grad, torch.autograd.grad(ladj.sum(), x)[0], atol=1e-10)


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_push_score_through_the_factors_equals_the_solve_with_their_product(batch):
    """Factor by factor (diagonal, lower, orthogonal, general solves) equals ``J^{-T} (a - g)`` with the whole chain."""
    dim = 6
    chain = the_chain(dim)[:3] + [randomized(flow("householder", dim, 2)), randomized(flow("planar", dim, 2))] + the_chain(dim)[3:]
    x = torch.randn(batch + (dim,), dtype=F64)
    inputs, _ = inputs_of(chain, x)
    factors = jacobian_factors(chain, inputs)
    assert {s for _, _, s in factors} == {"diagonal", "lower", "orthogonal", "general"}
    score = torch.randn(batch + (dim,), dtype=F64)
    jac, grad = chain_jacobian_and_log_det_grad(chain, inputs)
    dense = torch.linalg.solve(jac.transpose(-1, -2), (score - grad).unsqueeze(-1)).squeeze(-1)
    pushed = push_score(factors, score)
    assert pushed.shape == batch + (dim,)
    assert torch.allclose(pushed, dense, atol=1e-10, rtol=1e-9)


def test_a_map_without_a_closed_form_gives_none():
    dim = 4
    chain = the_chain(dim)[:2] + [AffineCoupling(dim).to(F64)]
    x = torch.randn(3, dim, dtype=F64)
    inputs, _ = inputs_of(chain, x)
    assert chain_jacobian(chain, inputs) is None
    assert chain_jacobian_and_log_det_grad(chain, inputs) is None
    assert jacobian_factors(chain, inputs) is None
    assert closed_form_jacobian(flow("radial", dim, 2), x) is None
    assert closed_form_jacobian(torch.distributions.transforms.ExpTransform(), x) is None


def test_an_empty_stack_is_the_identity():
    x = torch.randn(3, 4, dtype=F64)
    empty = flow("none", 4, 0).to(F64)
    assert torch.equal(closed_form_jacobian(empty, x), torch.eye(4, dtype=F64).expand(3, 4, 4))
    jac, grad = chain_jacobian_and_log_det_grad([empty], [x])
    assert torch.equal(jac, torch.eye(4, dtype=F64).expand(3, 4, 4)) and torch.equal(grad, torch.zeros_like(x))
    assert jacobian_factors([empty], [x]) == []
    score = torch.randn(3, 4, dtype=F64)
    assert torch.equal(push_score([], score), score)
