"""# Rezende & Mohamed's Figure 3, reproduced

Figure 3 of *Variational Inference with Normalizing Flows* (Rezende & Mohamed, ICML 2015) fits
planar flows of length {math}`K = 2, 8, 32` to four unnormalised 2-D densities
{math}`p(z) \\propto e^{-U(z)}` and shows that longer flows match them better.  The energies ship
in {mod}`pyro_nfvi.targets` as Pyro models ({func}`~pyro_nfvi.targets.energy_model`), with their
log-normalisers computed on a grid, so the gap between the bound and {math}`\\log Z` is the
{math}`\\mathrm{KL}(q \\,\\|\\, p)` of each fit.

{func}`~pyro_nfvi.targets.fit_energy` minimises the annealed free energy of the paper,
{math}`\\mathbb E_q[\\log q(z) + \\beta_t U(z)]`, with {math}`\\beta_t` rising from 0.01 to 1.  The
paper runs 500,000 updates; the settings below (`STEPS`) run in seconds and already show the trend.
`python -m pyro_nfvi.cli demo` and `examples/energy.py` run the long version.
"""
import os

import matplotlib.pyplot as plt

from pyro_nfvi.targets import fit_energy, plot_energy_fits

STEPS = 120  # 3000 or more for the converged figure
LENGTHS = (2, 8, 32)

# %%
# ## Fit the four energies with planar flows of three lengths

fits = []
for target in ("U1", "U2", "U3", "U4"):
    for num_flows in LENGTHS:
        fit = fit_energy(target, flow="planar", num_flows=num_flows, steps=STEPS, samples=32,
                         eval_samples=2000, grid=200, seed=0)
        fits.append(fit)
        print(f"{target}  K={num_flows:2d}  bound {fit.bound:7.3f}  log Z {fit.log_z:7.3f}  "
              f"KL {fit.kl:6.3f}")

# %%
# ## The figure
#
# One row per energy: the true density, then samples from each fitted flow (histograms), titled
# with the flow, its length and the KL.  {func}`~pyro_nfvi.targets.plot_energy_fits` writes the
# figure to a file; here it is read back to show it.

path = plot_energy_fits(fits, os.path.abspath("figure3.png"), num_samples=10000, bins=80)
plt.figure(figsize=(12, 13))
plt.imshow(plt.imread(path))
plt.axis("off")

# %%
# ## The KL by flow length
#
# As in the paper, the KL falls with the flow's length on every energy.  At these few steps every
# fit is far from converged; `python examples/energy.py` runs the long version.

print("target " + "".join(f"  K={k:<5d}" for k in LENGTHS))
for i, target in enumerate(("U1", "U2", "U3", "U4")):
    row = fits[i * len(LENGTHS):(i + 1) * len(LENGTHS)]
    print(f"{target:6s} " + "".join(f"  {fit.kl:7.3f}" for fit in row))
