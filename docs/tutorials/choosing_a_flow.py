"""# Choosing a flow and its length

Every family in {mod}`pyro_nfvi.transforms` is a valid flow guide; they differ in what one layer
can do, what it costs, and how it behaves as the flow gets longer.

| family | one layer | cost per layer ({math}`D` latents) | notes |
|---|---|---|---|
| `planar` | {math}`z + u\\,\\tanh(w^\\top z + b)` | {math}`O(D)` | cheap, but each layer passes through a one-unit bottleneck {math}`w^\\top z`: it bends along one direction, so high-dimensional dependence needs many layers |
| `radial` | contraction/expansion around a point | {math}`O(D)` | the other flow of Rezende & Mohamed; same limits |
| `householder` | a reflection {math}`(I - 2vv^\\top/\\|v\\|^2)z` | {math}`O(D)` | volume preserving (log-det 0): it only rotates, so it adds correlations to a diagonal Gaussian and nothing else |
| `iaf` | {math}`\\mu(z) + \\sigma(z) \\odot z`, autoregressive (MADE) | {math}`O(D H)` | the only family that beat the Gaussian VAE in Henrion & Welleck's study; in our rerun (`benchmarks/results/mnist_vae.md`) every family beat it at K=2, IAF by 1.59 nats; affine, with its network output scaled by 1/fan-in in `AutoFlowGuide` |
| `sylvester` | {math}`z + QR\\tanh(\\tilde R Q^\\top z + b)` | {math}`O(D M)` | a planar flow with {math}`M` hidden units: removes the bottleneck; the best row of our MNIST rerun (test -ELBO 92.56 at K=2, 2.34 nats better than the VAE) |
| `coupling` | {math}`z_T \\odot e^{s(z_I)} + t(z_I)` (Real NVP) | {math}`O(D H)` | the recipe of the black-box VI benchmarks; exact inverse |

This tutorial measures the families on the 2-D energy U3 of Rezende & Mohamed (a curved, split
ridge), then looks inside trained flows with the contraction analysis of Henrion & Welleck
(2019, section 4.5).  Settings are small; the page runs in seconds.
"""
import matplotlib.pyplot as plt
import pyro
import torch

from pyro_nfvi.targets import fit_energy

TARGET, STEPS, K = "U3", 120, 8  # 3000 steps for converged fits

# %%
# ## The families at equal length
#
# Each fit is {func}`~pyro_nfvi.targets.fit_energy` with the same steps, samples and seed; `KL` is
# {math}`\log Z - \text{bound}`, the {math}`\mathrm{KL}(q \,\|\, p)` of the fit.

fits = {}
for family in ("none", "planar", "householder", "iaf", "sylvester", "coupling"):
    fit = fit_energy(TARGET, flow=family, num_flows=0 if family == "none" else K, steps=STEPS,
                     samples=32, eval_samples=2000, grid=200, seed=0)
    fits[family] = fit
    print(f"{family:12s} K={0 if family == 'none' else K}  bound {fit.bound:6.3f}  KL {fit.kl:6.3f}")

# %%
# Householder reflections leave the Gaussian a Gaussian (with a full covariance), so on a 2-D
# non-Gaussian target they cannot beat the base; their use is in VAEs, where the encoder's
# Gaussian is diagonal.
#
# ## Inside a flow: initial density, final density, log-determinants
#
# Henrion & Welleck found that trained IAF flows *contract*: the encoder learns a broad initial
# {math}`q_0`, and the layers' negative log-determinants sharpen it into {math}`q_K`, more so the
# longer the flow.  With {math}`z_K = f_K \circ \dots \circ f_1(z_0)`,
#
# ```{math}
# \log q_K(z_K) = \log q_0(z_0) - \sum_{k=1}^K \log\Big|\det \frac{\partial f_k}{\partial z_{k-1}}\Big|.
# ```
#
# The guide's posterior is a `TransformedDistribution` of a standard normal through the affine
# base ({math}`q_0`) and the flow stack, whose IAF and coupling layers (and the permutations
# between them) apply one at a time, so each term is computed from public objects.  (The owned
# parameters of planar, radial, Householder and Sylvester layers are packed into their stack,
# which is then applied as a whole.)

def contraction(fit, num_samples=4000):
    """E[log q0(z0)], E[log qK(zK)] and the mean log|det J| of each flow layer, under q."""
    with pyro.settings.context(module_local_params=True):  # as fit_energy trained it
        posterior = fit.guide.get_posterior()
    affine, *stacks = posterior.transforms
    with torch.no_grad():
        eps = posterior.base_dist.sample((num_samples,))
        z = affine(eps)
        log_q0 = float((posterior.base_dist.log_prob(eps) - affine.log_abs_det_jacobian(eps, z)).mean())
        per_layer = []
        for stack in stacks:
            for layer in stack:
                z, log_det = layer.forward_and_log_det(z)
                if type(layer).__name__ != "Permute":  # permutations: log-det 0
                    per_layer.append(float(log_det.mean()))
    return log_q0, log_q0 - sum(per_layer), per_layer


print(f"{'flow':9s} {'E log q0':>9s} {'E log qK':>9s} {'sum logdet':>11s}   per layer")
for family in ("iaf", "coupling"):
    log_q0, log_qk, per_layer = contraction(fits[family])
    print(f"{family:9s} {log_q0:9.3f} {log_qk:9.3f} {sum(per_layer):11.3f}   "
          + " ".join(f"{v:+.2f}" for v in per_layer))

# %%
# ## Longer flows
#
# The same analysis for IAF flows of length 1, 2 and 8, the lengths of Henrion & Welleck's
# Figure 4 being 1, 2 and 10.  Their finding, on MNIST, is that the initial density falls and the
# summed log-determinant grows more negative with the length while the final density stays put:
# the longer flow spends its extra layers undoing a broader start.  Compare with the run below.

lengths = (1, 2, K)
rows = []
for num_flows in lengths:
    fit = fits["iaf"] if num_flows == K else fit_energy(
        TARGET, flow="iaf", num_flows=num_flows, steps=STEPS, samples=32, eval_samples=2000,
        grid=200, seed=0)
    log_q0, log_qk, per_layer = contraction(fit)
    rows.append((log_q0, log_qk, sum(per_layer)))
    print(f"IAF K={num_flows}: E log q0 {log_q0:7.3f}   E log qK {log_qk:7.3f}   "
          f"sum log|det J| {sum(per_layer):7.3f}   KL {fit.kl:6.3f}")

fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, column, title in zip(axes, range(3), ("initial log-density", "final log-density",
                                              "sum of log-det-Jacobians")):
    ax.bar([str(k) for k in lengths], [row[column] for row in rows])
    ax.set_xlabel("IAF flow length K")
    ax.set_title(title)
fig.tight_layout()

# %%
# ## Which flow should I use?
#
# * **A Pyro model with global latents** ({class}`~pyro_nfvi.guides.AutoFlowGuide`): the default,
#   4 IAF layers with scaled networks, trained with {func}`pyro_nfvi.fit <pyro_nfvi.recipe.fit>`; `base="full"` when the posterior is
#   strongly correlated; `coupling` when you need the exact inverse.
# * **A VAE** ({class}`~pyro_nfvi.guides.AmortizedFlowGuide`): IAF; Householder as a cheap way
#   to add correlations; Sylvester when planar is too narrow.
# * **Many latents, tight budget**: planar or Householder, with more layers rather than wider ones.
# * **Diagnose, don't guess**: compare {func}`~pyro_nfvi.evaluation.psis_khat` and the bound
#   across two or three families at a short budget, then train the best one longer.
