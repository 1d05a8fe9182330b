r"""The Laplace approximation of a log density, and the fixed affine map that whitens a guide with it.

:func:`laplace_approximation` finds the mode :math:`\hat u` of a log density :math:`\log p(u)` on
:math:`\mathbb R^D` with L-BFGS and returns :math:`\mathcal N(\hat u, H^{-1})`, :math:`H = -\nabla^2
\log p(\hat u)`.  :class:`Preconditioner` holds such a Gaussian's location and Cholesky factor as
state buffers and gives the map :math:`v \mapsto \hat u + L v`, so that a flow guide can learn in
whitened coordinates :math:`v`, where the posterior is close to :math:`\mathcal N(0, I)` whatever
the scales and correlations of :math:`u` (condition numbers of 1e6 in a collinear regression):
Adam's steps of about ``lr`` per parameter then mean the same thing in every direction.

Reference: MacKay, *Information Theory, Inference, and Learning Algorithms*, 2003, ch. 27 (Laplace's
method); Agrawal, Sheldon & Domke, *Advances in Black-Box VI*, NeurIPS 2020 (warm starts).
"""
import warnings

import torch
from pyro.distributions.transforms import LowerCholeskyAffine
from torch import nn

from ..validation import check_int

__all__ = ["NONFINITE_WALL", "PRECONDITION_MAX_DIM", "Preconditioner", "laplace_approximation"]

#: ``AutoFlowGuide(precondition="auto")`` preconditions a model with at most this many latent
#: dimensions: the map holds a D x D factor and the Laplace warm start an autograd Hessian (D
#: backward passes), cheap below a few hundred dimensions.
PRECONDITION_MAX_DIM = 200

#: How far above :math:`-\log p` at the start :func:`laplace_approximation`'s L-BFGS puts a trial point
#: where :math:`-\log p` is not finite (off the support, or past an overflow): a wall with zero
#: gradient, so that the strong Wolfe line search shortens the step instead of carrying a NaN into the
#: iterate (a higher wall overflows the line search's cubic interpolation in float32).
NONFINITE_WALL = 1e10


def laplace_approximation(log_density, start, num_steps=200):
    r"""The Laplace approximation :math:`(\hat u, H^{-1})` of ``log_density`` near ``start``, in float64.

    L-BFGS with a strong Wolfe line search (at most ``num_steps`` iterations, in the dtype of
    ``start``) maximises ``log_density``; :math:`H` is the autograd Hessian of :math:`-\log p` at the
    mode, in float64, symmetrised.  A trial point of the line search where ``log_density`` is not
    finite (off the support) is a wall ``NONFINITE_WALL`` above the start's value, so the search
    shortens its step there.

    Args:
        log_density (callable): ``u (D,) -> log p(u)`` (a scalar tensor), differentiable.
        start (torch.Tensor): the starting point, shape ``(D,)``.
        num_steps (int): L-BFGS iterations at most.

    Returns:
        tuple: ``(mode, covariance)``, float64 tensors of shapes ``(D,)`` and ``(D, D)``.

    Raises:
        ValueError: ``log_density`` is not finite at ``start``, no finite mode was found, or
            :math:`H` is not positive definite there (a funnel, whose density grows without bound as
            its scale goes to zero, has no Laplace approximation).

    Example:
        >>> prec = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> mode, cov = laplace_approximation(lambda u: -0.5 * (u - 1.0) @ prec @ (u - 1.0), torch.zeros(2))
        >>> mode
        tensor([1., 1.], dtype=torch.float64)
        >>> bool(torch.allclose(cov, torch.linalg.inv(prec.double())))
        True
    """
    num_steps = check_int("num_steps", num_steps)
    if start.dim() != 1:
        raise ValueError(f"laplace_approximation needs a start of shape (D,), got {tuple(start.shape)}")
    dtype = start.dtype
    u = start.detach().clone().requires_grad_(True)
    optim = torch.optim.LBFGS([u], lr=1.0, max_iter=num_steps, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-9, tolerance_change=1e-12)

    with torch.no_grad():
        start_loss = -log_density(u)
    if not torch.isfinite(start_loss):
        raise ValueError(f"log_density is not finite at the start ({start_loss.item()}): start inside the support")
    wall = abs(start_loss.item()) + NONFINITE_WALL

    def closure():
        optim.zero_grad()
        with warnings.catch_warnings():  # a trial point off the support is expected: Pyro's NaN warning is noise
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            loss = -log_density(u)
        if not torch.isfinite(loss):  # the wall (zero gradient) that the line search backs away from
            return loss.detach().new_tensor(wall)
        loss.backward()
        return loss

    try:
        optim.step(closure)
    except (ValueError, RuntimeError) as err:  # e.g. a distribution's validation at a non-finite point
        raise ValueError(f"L-BFGS failed to find a mode ({str(err).splitlines()[0]})") from err
    mode = u.detach().double()
    if not torch.isfinite(mode).all():
        raise ValueError("L-BFGS left the support: the mode is not finite")
    hessian = torch.autograd.functional.hessian(lambda v: -log_density(v.to(dtype)).double(), mode)
    hessian = 0.5 * (hessian + hessian.T)
    chol, info = torch.linalg.cholesky_ex(hessian)
    if info.item() != 0 or not torch.isfinite(hessian).all():
        raise ValueError(
            "the Hessian of -log p at the mode is not positive definite (no Laplace approximation, as "
            "on a funnel)"
        )
    return mode, torch.cholesky_inverse(chol)


class Preconditioner(nn.Module):
    r"""The fixed affine map :math:`v \mapsto \hat u + L v` (``shift``, lower-triangular ``scale_tril``).

    Identity at construction (``shift = 0``, :math:`L = I`); :meth:`set_gaussian` sets it to a
    Gaussian :math:`\mathcal N(\hat u, \Sigma)` (:math:`L L^\top = \Sigma`).  Both are persistent
    buffers named in ``state_buffers``, so ``state_dict``, ``torch.save`` and Pyro's param store
    carry them (``pyro_nfvi.guides.state``); no optimizer changes them.

    Args:
        dim (int): the dimension :math:`D`.
        dtype (torch.dtype): the buffers' dtype.
        device (torch.device): the buffers' device.

    Example:
        >>> p = Preconditioner(2)
        >>> p.set_gaussian(torch.tensor([1.0, 2.0]), torch.tensor([[4.0, 0.0], [0.0, 9.0]]))
        >>> p.transform()(torch.tensor([1.0, 1.0]))
        tensor([3., 5.])
    """

    #: buffers that are part of the guide's state (saved in Pyro's param store too)
    state_buffers = ("shift", "scale_tril")

    def __init__(self, dim, dtype=None, device=None):
        super().__init__()
        dim = check_int("dim", dim)
        self.register_buffer("shift", torch.zeros(dim, dtype=dtype, device=device))
        self.register_buffer("scale_tril", torch.eye(dim, dtype=dtype, device=device))

    @torch.no_grad()
    def set_gaussian(self, loc, covariance):
        """Set the map to ``loc + cholesky(covariance) v``."""
        self.shift.copy_(loc)
        self.scale_tril.copy_(torch.linalg.cholesky(covariance.to(self.scale_tril.dtype)))

    def transform(self):
        """The map as a Pyro ``LowerCholeskyAffine`` (constant ``log|det|`` = sum of log diag L)."""
        return LowerCholeskyAffine(self.shift, self.scale_tril, cache_size=1)

    def extra_repr(self):
        return f"dim={self.shift.shape[0]}"
