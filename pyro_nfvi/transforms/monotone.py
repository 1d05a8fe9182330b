"""A safeguarded solver for the monotone scalar equation shared by the planar and Sylvester inverses."""
import torch

__all__ = ["solve_monotone"]


def solve_monotone(wy, uw, b, iters=200):
    r"""Solve :math:`\alpha + u_w \tanh(\alpha + b) = w_y` for :math:`\alpha` (``uw > -1``), elementwise.

    The left side is strictly increasing in :math:`\alpha` when :math:`u_w > -1` (its derivative is
    :math:`1 + u_w \mathrm{sech}^2 \ge \min(1, 1 + u_w) > 0`), and the root lies in
    :math:`[w_y - |u_w|, w_y + |u_w|]`, so bisection on that bracket always converges; it stops at
    rounding level and two Newton steps polish the result.  This is the scalar equation behind the
    planar inverse (Rezende & Mohamed 2015, appendix A) and each row of the Sylvester inverse's
    back substitution.  Not differentiable (callers run it under ``no_grad`` and add one Newton
    step with gradients for the implicit-function gradient).

    Args:
        wy (Tensor): right-hand side.
        uw (Tensor): slope factor, ``> -1``; broadcasts against ``wy``.
        b (Tensor or float): shift inside ``tanh``; broadcasts against ``wy``.
        iters (int): cap on the number of bisection steps.

    Example:
        >>> alpha = solve_monotone(torch.tensor([0.3, -2.0]), torch.tensor([0.5, -0.9]), 0.1)
        >>> torch.allclose(alpha + torch.tensor([0.5, -0.9]) * torch.tanh(alpha + 0.1), torch.tensor([0.3, -2.0]))
        True
    """
    wy, uw, b = torch.broadcast_tensors(wy, uw, torch.as_tensor(b, dtype=wy.dtype, device=wy.device))
    span = uw.abs()
    lo, hi = wy - span, wy + span
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = mid + uw * torch.tanh(mid + b) > wy
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
        if bool(((hi - lo) <= 4 * torch.finfo(wy.dtype).eps * (1.0 + mid.abs())).all()):
            break
    alpha = 0.5 * (lo + hi)
    for _ in range(2):
        t = torch.tanh(alpha + b)
        alpha = alpha - (alpha + uw * t - wy) / (1.0 + uw * (1.0 - t * t))
    return alpha
