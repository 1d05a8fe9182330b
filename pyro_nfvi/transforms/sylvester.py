"""Sylvester normalizing flows (van den Berg et al. 2018): orthogonal, Householder and triangular.

A Sylvester layer is ``z' = z + Q R h(R~ Q^T z + b)`` with ``Q`` (``D x M``) having orthonormal
columns, ``R, R~`` (``M x M``) upper triangular and ``h = tanh``.  With ``Q^T Q = I`` the matrix
determinant lemma gives ``det J = prod_i (1 + r_ii r~_ii h'(a_i))``, ``a = R~ Q^T z + b``.  Everything
here is arranged so that this formula is *true* for the map that is computed: ``Q`` is orthonormal to
machine precision (see ``orthonormalize``), and the diagonal constraint keeps every factor
positive, so the layer is a bijection with an exact inverse (see :class:`Sylvester`).
"""
import math
import warnings

import torch

from ..validation import check_choice, check_int
from .base import FlowModule
from .monotone import solve_monotone
from .planar import planar_log_det, planar_uhat

__all__ = ["Sylvester", "orthonormalize", "qr_orthonormal", "complete_to_rotation", "householder_product", "ORTHOGONALIZATIONS", "SYLVESTER_KINDS"]

#: The ways of building ``Q``: Bjorck-orthogonalised ``D x M`` matrix, product of Householder
#: reflections, or a fixed permutation (triangular Sylvester flow).
SYLVESTER_KINDS = ("orthogonal", "householder", "triangular")


#: How ``kind="orthogonal"`` turns its raw ``D x M`` matrix into orthonormal columns:
#: ``"qr"`` (``qr_orthonormal``, the default: one Householder QR, about 10x cheaper than
#: Bjorck per amortized batch) or ``"bjorck"`` (``orthonormalize``, van den Berg et al.'s choice).
ORTHOGONALIZATIONS = ("qr", "bjorck")


def qr_orthonormal(w):
    r"""Orthonormal columns from ``w`` (``(..., D, M)``, ``M <= D``): the :math:`Q` of :math:`w = QR` with :math:`r_{ii} > 0`.

    With the signs fixed so that :math:`R` has a positive diagonal the factorisation is unique and
    :math:`Q` is a smooth function of a full-rank ``w`` (Gram-Schmidt on its columns), so autograd
    runs through it (``torch.linalg.qr``'s backward).  One Householder QR costs :math:`O(D M^2)`,
    against a few tens of :math:`O(D M^2)` Bjorck steps for ``orthonormalize``; the two give
    different orthonormal matrices for the same ``w`` (Gram-Schmidt against the polar factor), both
    valid parametrisations of the Stiefel manifold.

    Reference: Golub & Van Loan, *Matrix Computations*, 4th ed., 2013, section 5.2.

    Args:
        w (Tensor): ``(..., D, M)`` with ``M <= D``.

    Example:
        >>> w = torch.randn(5, 3, dtype=torch.float64)
        >>> q = qr_orthonormal(w)
        >>> torch.allclose(q.mT @ q, torch.eye(3, dtype=torch.float64), atol=1e-12)
        True
        >>> bool(torch.allclose(q @ (q.mT @ w), w))  # the same column space
        True
    """
    if w.shape[-1] > w.shape[-2]:
        raise ValueError(f"qr_orthonormal needs M <= D, got a matrix of shape {tuple(w.shape)}")
    q, r = torch.linalg.qr(w)
    sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) >= 0, 1.0, -1.0).to(w.dtype)
    return q * sign.unsqueeze(-2)


def orthonormalize(w, max_iter=100):
    r"""Orthonormal columns from ``w`` (``(..., D, M)``, ``M <= D``) by Bjorck iteration
    :math:`Q \leftarrow Q\,(I + \tfrac12 (I - Q^\top Q))`, run to machine precision.

    Reference: Bjorck & Bowie, *An iterative algorithm for computing the best estimate of an
    orthogonal matrix*, SIAM J. Numer. Anal. 1971; used by van den Berg et al. 2018.

    ``w`` is first divided by its spectral norm (a detached scale: the limit, the orthogonal polar
    factor of ``w``, is scale-invariant), so every singular value lies in ``(0, 1]`` and the
    iteration converges for any full-rank ``w``; small singular values grow by ``~1.5x`` per step and
    the error is then squared per step.  Once ``max |Q^T Q - I| < 1e-4`` two more steps reach
    rounding level.  The iteration is differentiable (autograd runs through it).  A matrix that is
    rank-deficient to working precision never converges: after ``max_iter`` steps its entries are
    replaced by the ``Q`` factor of a QR decomposition (orthonormal, but not smooth in ``w``) and a
    ``RuntimeWarning`` is raised.

    Args:
        w (Tensor): ``(..., D, M)`` with ``M <= D``.
        max_iter (int): cap on the number of Bjorck steps.

    Example:
        >>> q = orthonormalize(torch.randn(5, 3, dtype=torch.float64))
        >>> torch.allclose(q.mT @ q, torch.eye(3, dtype=torch.float64), atol=1e-12)
        True
    """
    m = w.shape[-1]
    if m > w.shape[-2]:
        raise ValueError(f"orthonormalize needs M <= D, got a matrix of shape {tuple(w.shape)}")
    eye = torch.eye(m, dtype=w.dtype, device=w.device)
    scale = torch.linalg.matrix_norm(w.detach(), ord=2, keepdim=True)
    q = w / torch.clamp(scale, min=torch.finfo(w.dtype).tiny)
    extra = None
    for _ in range(max_iter):
        gram = q.mT @ q
        if extra is None and float((gram.detach() - eye).abs().max()) < 1e-4:
            extra = 2
        if extra == 0:
            break
        q = q @ (1.5 * eye - 0.5 * gram)
        if extra is not None:
            extra -= 1
    err = (q.detach().mT @ q.detach() - eye).abs().amax(dim=(-2, -1))
    bad = err > 1e3 * m * torch.finfo(w.dtype).eps
    if bool(bad.any()):
        warnings.warn(
            f"orthonormalize: {int(bad.sum())} matrices did not converge in {max_iter} Bjorck steps "
            "(rank-deficient input); using their QR factor instead",
            RuntimeWarning,
        )
        q = torch.where(bad[..., None, None], qr_orthonormal(q), q)
    return q


def complete_to_rotation(q):
    r"""``[q, n]``: ``D - 1`` orthonormal columns ``q`` (``(..., D, D-1)``) and their unit normal :math:`n`, :math:`\det = +1`.

    :math:`P = I - q q^\top = n n^\top` is the projector on the normal line; its column :math:`j`
    with the largest diagonal entry (:math:`P_{jj} = n_j^2 \ge 1/D`) divided by
    :math:`\sqrt{P_{jj}}` is :math:`\pm n`, signed so that the determinant is +1.  With ``j`` and the
    sign held fixed (both are locally constant) this is a smooth function of ``q`` and its gradient
    is that of the normal, :math:`dn = -q\,(dq^\top n)`: the result is a rotation of :math:`SO(D)`.

    Example:
        >>> q = complete_to_rotation(qr_orthonormal(torch.randn(3, 2, dtype=torch.float64)))
        >>> torch.allclose(q.mT @ q, torch.eye(3, dtype=torch.float64)), round(float(torch.linalg.det(q)), 12)
        (True, 1.0)
    """
    d = q.shape[-2]
    if q.shape[-1] != d - 1:
        raise ValueError(f"complete_to_rotation needs D - 1 columns, got a matrix of shape {tuple(q.shape)}")
    if d == 2:  # the quarter turn of the first column: the same normal, in two operations
        return torch.cat([q, torch.cat([-q[..., 1:, :], q[..., :1, :]], -2)], -1)
    proj = torch.eye(d, dtype=q.dtype, device=q.device) - q @ q.mT
    diag = torch.diagonal(proj, dim1=-2, dim2=-1)
    j = diag.detach().argmax(-1, keepdim=True)  # (..., 1)
    column = proj.gather(-1, j.unsqueeze(-2).expand(proj.shape[:-1] + (1,)))  # (..., D, 1)
    n = column / torch.sqrt(diag.gather(-1, j)).unsqueeze(-1)
    with torch.no_grad():
        sign = torch.where(torch.linalg.det(torch.cat([q, n], -1)) >= 0, 1.0, -1.0).to(q.dtype)
    return torch.cat([q, n * sign[..., None, None]], -1)


def householder_product(v):
    r"""``Q = H_1 H_2 ... H_K`` with :math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2`, for ``v`` of shape ``(..., K, D)``.

    Reference: Tomczak & Welling, *Improving Variational Auto-Encoders using Householder Flow*, 2016;
    van den Berg et al. 2018 (Householder Sylvester flow).  ``Q`` is orthogonal to rounding error
    for any ``v``; a zero ``v_k`` is taken as ``H_k = I``.

    Example:
        >>> q = householder_product(torch.randn(3, 4, dtype=torch.float64))
        >>> torch.allclose(q.mT @ q, torch.eye(4, dtype=torch.float64), atol=1e-12)
        True
    """
    d = v.shape[-1]
    q = torch.eye(d, dtype=v.dtype, device=v.device).expand(v.shape[:-2] + (d, d))
    for k in range(v.shape[-2]):
        vk = v[..., k, :]
        n2 = (vk * vk).sum(-1)
        coef = torch.where(n2 > 0, 2.0 / torch.where(n2 > 0, n2, torch.ones_like(n2)), torch.zeros_like(n2))
        qv = (q @ vk.unsqueeze(-1)) * coef[..., None, None]
        q = q - qv @ vk.unsqueeze(-2)
    return q


def _matvec(a, x):
    # matmul does not promote: a float64 input to float32 parameters is promoted here, as the
    # elementwise families promote it
    if a.dtype != x.dtype:
        dtype = torch.promote_types(a.dtype, x.dtype)
        a, x = a.to(dtype), x.to(dtype)
    return (a @ x.unsqueeze(-1)).squeeze(-1)


class Sylvester(FlowModule):
    r"""Sylvester flow :math:`z' = z + Q R \tanh(\tilde R Q^\top z + b)` with
    :math:`\log|\det J| = \sum_i \log(1 + r_{ii}\tilde r_{ii}\,(1 - \tanh^2 a_i))`,
    :math:`a = \tilde R Q^\top z + b`.

    Reference: van den Berg, Hasenclever, Tomczak & Welling, *Sylvester Normalizing Flows for
    Variational Inference*, UAI 2018.

    ``Q`` (``D x M``, orthonormal columns) depends on ``kind``:

    * ``"orthogonal"``: a raw ``D x M`` matrix ``Q`` orthonormalised by ``qr_orthonormal``
      (``orthogonalization="qr"``, the default: one QR decomposition) or ``orthonormalize``
      (``"bjorck"``: Bjorck iteration to machine precision, van den Berg et al.'s choice, about 10x
      the cost for a batch of amortized matrices); both differentiable.  With ``M = D`` (the
      default) the raw matrix has ``D - 1`` columns and ``Q`` is their orthonormalisation completed
      to a rotation (``complete_to_rotation``, :math:`\det Q = +1`): a raw last column would only
      choose the orientation, which flips when it crosses the span of the others -- a jump of the
      map, with the QR gradient :math:`\propto 1/r_{DD}` blowing up on the way (seen on U2 in two
      dimensions after 19,736 steps).  Nothing is lost: with ``S`` the sign flip of the last
      coordinate, ``(Q S, R, R~)`` and ``(Q, S R, R~ S)`` give the same map, and ``S R`` (``r_DD``
      negated) and ``R~ S`` (last column negated) are reached by negating the raw ``r~_DD``,
      ``rho_DD`` and ``R~``'s last column;
    * ``"householder"``: the product of ``num_householder`` reflections, ``householder_product``
      (``M = D``);
    * ``"triangular"``: a fixed permutation, the identity or (``reverse=True``) the reversal
      (``M = D``); stacks should alternate the two.

    ``R`` and ``R~`` are upper triangular, from raw diagonals and packed strict upper triangles.  The
    log-det formula assumes ``Q^T Q = I``, which holds to rounding error for all three kinds, so it is
    exact (checked against ``slogdet`` of the autograd Jacobian at random parameters in the tests).

    Diagonal constraint (the planar constraint applied to each ``(r_ii, r~_ii)`` pair,
    :func:`~pyro_nfvi.transforms.planar_uhat`): ``r~_ii`` is free and ``r_ii`` is chosen so
    that ``r_ii r~_ii = softplus(rho_ii r~_ii + log(e - 1)) - 1 > -1`` for the raw ``rho_ii``.  Since
    ``0 < h' <= 1`` every factor ``1 + r_ii r~_ii h'`` is ``> 0``, without the ``|r r~| < 1`` cap of
    ``tanh``-constrained diagonals, and the log-det is computed in log space
    (``pyro_nfvi.transforms.planar.planar_log_det``).  Raw ``R = 0`` gives ``r_ii = 0``, so the
    layer starts as the identity; ``R~`` and ``Q`` start random so gradients flow to ``R``.

    Inverse: with ``v = R~ Q^T z + b`` and ``T = R~ R`` (upper triangular, ``t_ii > -1``), ``y = f(z)``
    is equivalent to ``v + T tanh(v) = R~ Q^T y + b`` and ``z = y - Q R tanh(v)``.  The triangular
    system is solved exactly by back substitution, one monotone scalar equation per row (bisection
    then Newton, as in the planar inverse), so it converges for every ``y``: this is also why the map
    is a bijection.  A final differentiable Newton step (triangular solve) gives the implicit-function
    gradient.

    Args:
        dim (int): event size ``D``.
        context_dim (int): 0 for owned parameters; ``> 0`` to predict every parameter per data point
            from a context with a hypernetwork (per-point ``Q``, ``R``, ``R~``, ``b``).
        kind (str): ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        num_ortho (int or None): ``M``, columns of ``Q`` (``"orthogonal"`` only); default ``dim``.
        num_householder (int or None): reflections (``"householder"`` only); default ``dim``.
        hidden (tuple): hidden sizes of the hypernetwork (amortized only).
        reverse (bool): ``"triangular"`` only: use the reversal permutation as ``Q``.
        cache_size (int): 0 or 1.
        sylvester_kind (str or None): deprecated alias of ``kind`` (``FutureWarning``); it was the
            name :func:`~pyro_nfvi.transforms.flow` forwarded before that factory's first argument
            was renamed ``family``.
        orthogonalization (str): ``"qr"`` or ``"bjorck"`` (``kind="orthogonal"`` only), see above.
        output_scale (float or str): amortized only: factor on the hypernetwork's output layer,
            ``"none"`` (1), ``"fan_in"`` (``1 / fan_in``: per-point parameters move at Adam's pace, see
            ``pyro_nfvi.transforms.output_scale``) or a positive float.  Amortized, a per-point ``Q``
            that moves fast drifts to near-singular raw matrices, whose QR gradient explodes:
            ``AmortizedFlowGuide`` scales this family by default.

    Example:
        >>> layer = Sylvester(3, kind="householder")
        >>> x = torch.randn(5, 3)
        >>> y = layer(x)
        >>> torch.allclose(y, x), layer.log_abs_det_jacobian(x, y).shape
        (True, torch.Size([5]))
        >>> amortized = Sylvester(3, context_dim=2, num_ortho=2)
        >>> amortized.condition(torch.randn(4, 2))(torch.randn(7, 4, 3)).shape
        torch.Size([7, 4, 3])
    """

    def __init__(
        self,
        dim,
        context_dim=0,
        kind="orthogonal",
        num_ortho=None,
        num_householder=None,
        hidden=(),
        reverse=False,
        cache_size=1,
        sylvester_kind=None,
        orthogonalization="qr",
        output_scale="none",
    ):
        super().__init__(dim, context_dim=context_dim, cache_size=cache_size)
        if sylvester_kind is not None:
            warnings.warn(
                "Sylvester(sylvester_kind=...) is deprecated: pass kind=... (flow('sylvester', ..., "
                "kind=...) now forwards it too)",
                FutureWarning,
                stacklevel=2,
            )
            if kind not in ("orthogonal", sylvester_kind):
                raise ValueError(f"kind={kind!r} and sylvester_kind={sylvester_kind!r} disagree")
            kind = sylvester_kind
        self.kind = check_choice("kind", kind, SYLVESTER_KINDS)
        self.orthogonalization = check_choice("orthogonalization", orthogonalization, ORTHOGONALIZATIONS)
        if kind != "orthogonal" and orthogonalization != "qr":
            raise ValueError(f"orthogonalization is only used by kind='orthogonal', not kind={kind!r}")
        if kind == "orthogonal":
            m = self.dim if num_ortho is None else check_int("num_ortho", num_ortho)
            if m > self.dim:
                raise ValueError(f"num_ortho must be <= dim={self.dim}, got {num_ortho}")
        elif num_ortho is not None and num_ortho != self.dim:
            raise ValueError(f"num_ortho is only used by kind='orthogonal' (kind={kind!r} has M = dim)")
        else:
            m = self.dim
        if kind == "householder":
            k = self.dim if num_householder is None else check_int("num_householder", num_householder)
            self.num_householder = k
        elif num_householder is not None:
            raise ValueError(f"num_householder is only used by kind='householder', not kind={kind!r}")
        else:
            self.num_householder = 0
        self.num_ortho = m
        self.reverse = bool(reverse)
        if kind == "triangular":
            perm = torch.arange(self.dim - 1, -1, -1) if self.reverse else torch.arange(self.dim)
            self.register_buffer("perm_matrix", torch.eye(self.dim)[:, perm])
        rows, cols = torch.triu_indices(m, m, offset=1)
        self.register_buffer("upper_flat", rows * m + cols, persistent=False)
        self._build_params(hidden, output_scale)

    # -- raw parameters ----------------------------------------------------------------------------
    def param_shapes(self):
        d, m = self.dim, self.num_ortho
        shapes = {}
        if self.kind == "orthogonal" and self._raw_columns():
            shapes["Q"] = (d, self._raw_columns())
        elif self.kind == "householder":
            shapes["v"] = (self.num_householder, d)
        shapes["R_diag"] = (m,)
        shapes["Rt_diag"] = (m,)
        if m > 1:  # no zero-size parameters
            shapes["R_upper"] = (m * (m - 1) // 2,)
            shapes["Rt_upper"] = (m * (m - 1) // 2,)
        shapes["b"] = (m,)
        return shapes

    def init_params(self):
        d, m = self.dim, self.num_ortho
        init = {}
        if self.kind == "orthogonal" and self._raw_columns():
            init["Q"] = torch.linalg.qr(torch.randn(d, self._raw_columns())).Q
        elif self.kind == "householder":
            init["v"] = torch.randn(self.num_householder, d) / math.sqrt(d)
        # R = 0 (raw diagonal 0 maps to r_ii = 0): the identity.  R~ random with |r~_ii| in [0.5, 1.5]
        # so that the gradient w.r.t. R is non-zero and the diagonal constraint is well conditioned.
        sign = torch.where(torch.rand(m) < 0.5, -1.0, 1.0)
        init["R_diag"] = torch.zeros(m)
        init["Rt_diag"] = sign * (0.5 + torch.rand(m))
        if m > 1:
            init["R_upper"] = torch.zeros(m * (m - 1) // 2)
            init["Rt_upper"] = torch.randn(m * (m - 1) // 2) / math.sqrt(m)
        init["b"] = torch.zeros(m)
        return init

    def _raw_columns(self):
        """Raw columns of ``kind="orthogonal"``: ``M``, or ``D - 1`` if ``M = D`` (completed to a rotation)."""
        return self.num_ortho - 1 if self.num_ortho == self.dim else self.num_ortho

    def _q(self, raw):
        if self.kind == "orthogonal":
            if self._raw_columns() == 0:  # D = M = 1: SO(1) = {1}
                return torch.ones(1, 1, dtype=raw["b"].dtype, device=raw["b"].device)
            q = qr_orthonormal(raw["Q"]) if self.orthogonalization == "qr" else orthonormalize(raw["Q"])
            return complete_to_rotation(q) if self.num_ortho == self.dim else q
        if self.kind == "householder":
            return householder_product(raw["v"])
        return self.perm_matrix

    def _triangular(self, diag, upper):
        m = self.num_ortho
        mat = torch.diag_embed(diag)
        if upper is None:
            return mat
        batch = torch.broadcast_shapes(diag.shape[:-1], upper.shape[:-1])
        flat = upper.new_zeros(batch + (m * m,)).index_add(-1, self.upper_flat, upper.expand(batch + upper.shape[-1:]))
        return mat + flat.reshape(batch + (m, m))

    def constrain(self, raw):
        q = self._q(raw)
        r_diag, wu = planar_uhat(raw["R_diag"].unsqueeze(-1), raw["Rt_diag"].unsqueeze(-1))
        r = self._triangular(r_diag.squeeze(-1), raw.get("R_upper"))
        rt = self._triangular(raw["Rt_diag"], raw.get("Rt_upper"))
        return {
            "Q": q,
            "R": r,
            "Rt": rt,
            "QR": q @ r,  # (..., D, M)
            "RtQt": rt @ q.mT,  # (..., M, D)
            "T": rt @ r,  # (..., M, M), upper triangular, diagonal r_ii r~_ii > -1
            "b": raw["b"],
            "wu": wu,  # rho_ii r~_ii: r_ii r~_ii = softplus(wu + log(e-1)) - 1
        }

    # -- maths ------------------------------------------------------------------------------------
    def _forward(self, x, p):
        a = _matvec(p["RtQt"], x) + p["b"]
        y = x + _matvec(p["QR"], torch.tanh(a))
        return y, planar_log_det(a, p["wu"]).sum(-1)

    def _inverse(self, y, p):
        c = _matvec(p["RtQt"], y) + p["b"]
        t_mat = p["T"]
        m = c.shape[-1]
        with torch.no_grad():
            cd, td = c.detach(), t_mat.detach()
            v = torch.zeros_like(cd)
            th = torch.zeros_like(cd)
            for i in range(m - 1, -1, -1):  # back substitution: row i involves v_i and v_j, j > i
                rhs = cd[..., i] - (td[..., i, i + 1 :] * th[..., i + 1 :]).sum(-1)
                vi = solve_monotone(rhs, td[..., i, i].expand(rhs.shape), 0.0)
                v[..., i] = vi
                th[..., i] = torch.tanh(vi)
        # one Newton step with gradients attached: exact value, implicit-function gradient
        t = torch.tanh(v)
        resid = v + _matvec(t_mat, t) - c
        jac = torch.eye(m, dtype=c.dtype, device=c.device) + t_mat * (1.0 - t * t).unsqueeze(-2)
        v = v - torch.linalg.solve_triangular(jac, resid.unsqueeze(-1), upper=True).squeeze(-1)
        x = y - _matvec(p["QR"], torch.tanh(v))
        return x, planar_log_det(v, p["wu"]).sum(-1)

    def extra_repr(self):
        extra = f", num_ortho={self.num_ortho}, orthogonalization={self.orthogonalization!r}" if self.kind == "orthogonal" else ""
        if self.kind == "householder":
            extra = f", num_householder={self.num_householder}"
        if self.kind == "triangular":
            extra = f", reverse={self.reverse}"
        return f"{super().extra_repr()}, kind={self.kind!r}{extra}"
