"""# Diagnosing variational inference with PSIS and ArviZ

A variational fit always returns *something*.  Whether it can be trusted is a separate question,
and this tutorial answers it three ways on Rubin's eight schools, for which NUTS reference draws
ship with the package ({func}`~pyro_nfvi.targets.reference.load_reference`):

1. the Pareto {math}`\\hat k` of the importance weights {math}`p(y, \\theta)/q(\\theta)`
   (Yao et al., 2018): {math}`\\hat k < 0.5` good, {math}`0.5 \\le \\hat k < 0.7` usable,
   {math}`\\hat k \\ge 0.7` unreliable;
2. the moments of {math}`q` against the NUTS draws ({func}`~pyro_nfvi.evaluation.posterior_error`);
3. PSIS-LOO computed from the VI draws with the importance correction of Magnusson et al. (2019)
   ({func}`~pyro_nfvi.diagnostics.loo`), against the LOO of the NUTS draws.
"""
import arviz as az
import torch

import pyro
import pyro.distributions as dist
from pyro_nfvi import AutoFlowGuide, fit
from pyro_nfvi.diagnostics import importance_resample, loo, to_inference_data
from pyro_nfvi.evaluation import posterior_error, psis_khat
from pyro_nfvi.targets.bayes import eight_schools
from pyro_nfvi.targets.reference import load_reference

NUM_STEPS = 250  # 2000 for a converged fit

model, (sigma, y) = eight_schools(centered=False)
reference = load_reference("eight_schools_noncentered")
print("reference:", reference.info["source"], "draws:", {k: tuple(v.shape) for k, v in reference.draws.items()})

# %%
# ## Two fits
#
# A Gaussian (`flow="none"`, the same code path without a flow) and four IAF layers (the default), both
# trained by {func}`pyro_nfvi.fit <pyro_nfvi.recipe.fit>`, the package's recipe (warm start of the Gaussian base,
# learning-rate probes, clipped Adam, a lower-variance gradient estimator).

guides = {}
for name, flow, num_flows in [("Gaussian", "none", 0), ("IAF x4", "iaf", 4)]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlowGuide(model, flow=flow, num_flows=num_flows, name=f"guide_{flow}")  # two guides: two names
    result = fit(model, guide, sigma, y, num_steps=NUM_STEPS, lrs=(5e-3,), warm_start_steps=150)
    guides[name] = guide
    print(f"{name:9s} final loss {result.losses[-1]:7.2f} at lr {result.lr:g} ({result.seconds:.1f} s)")

# %%
# ## k-hat and the moments against NUTS
#
# `posterior_error` reports, in reference standard deviations and on the unconstrained scale, the
# largest error of a posterior mean and the largest relative error of a posterior sd.

for name, guide in guides.items():
    khat = float(psis_khat(model, guide, sigma, y, num_samples=2000))
    error = posterior_error(model, guide, sigma, y, reference=reference.draws)
    print(f"{name:9s} k-hat {khat:5.2f}   max mean error {error.mean:5.2f} sd   max |sd ratio - 1| {error.sd:5.2f}")

# %%
# Where k-hat is below 0.7 the importance weights {math}`p(y, \theta) / q(\theta)` of the guide's draws
# can correct its moments (self-normalised importance sampling, Yao et al. 2018); `importance=True`
# measures the corrected posterior.  A guide trained by `fit`'s default estimator (DReG, an
# importance-weighted bound) is a proposal for exactly this correction.

for name, guide in guides.items():
    corrected = posterior_error(model, guide, sigma, y, reference=reference.draws, importance=True)
    print(f"{name:9s} PSIS-corrected: max mean error {corrected.mean:5.2f} sd   max |sd ratio - 1| "
          f"{corrected.sd:5.2f}   (k-hat {corrected.khat:.2f}, ESS {corrected.ess:.0f})")

# %%
# ## ArviZ
#
# {func}`~pyro_nfvi.diagnostics.to_inference_data` gives an `InferenceData` with the posterior,
# the pointwise log-likelihood and, in `sample_stats`, the log importance weights.  Every ArviZ
# function works on it.

idata = to_inference_data(model, guides["IAF x4"], sigma, y, num_samples=2000)
print(idata)
print(az.summary(idata, var_names=["mu", "tau"], kind="stats"))

# %%
# {func}`~pyro_nfvi.diagnostics.importance_resample` turns the weights into equally weighted draws
# of the corrected posterior (systematic resampling), for every ArviZ summary and plot; its
# `sample_stats` attributes keep the weights' k-hat and effective sample size.

corrected_idata = importance_resample(idata, seed=0)
print(az.summary(corrected_idata, var_names=["mu", "tau"], kind="stats"))
print("k-hat", round(corrected_idata.sample_stats.attrs["khat"], 2), "ESS", round(corrected_idata.sample_stats.attrs["ess"]))

# %%
# ## LOO: importance-corrected VI draws against NUTS
#
# `arviz.loo` on raw VI draws treats them as posterior draws.
# {func}`pyro_nfvi.diagnostics.loo` corrects them by their importance weights first.  The NUTS
# LOO comes from the reference draws, whose pointwise log-likelihood is computed here directly.

draws = reference.draws
theta = draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_trans"]
log_lik = dist.Normal(theta, sigma).log_prob(y)  # (draws, schools)
nuts = az.from_dict(posterior={k: v[None].numpy() for k, v in draws.items()},
                    log_likelihood={"obs": log_lik[None].numpy()})
nuts_loo = az.loo(nuts)
print(f"NUTS              elpd_loo {nuts_loo.elpd_loo:7.2f} +- {nuts_loo.se:.2f}")
for name, guide in guides.items():
    idata = to_inference_data(model, guide, sigma, y, num_samples=2000)
    raw = az.loo(idata)
    corrected = loo(idata)
    print(f"{name:9s} raw     elpd_loo {raw.elpd_loo:7.2f}   corrected {corrected.elpd_loo:7.2f}"
          f"   (posterior k-hat {float(corrected.posterior_k):.2f}, max pointwise k {float(corrected.pareto_k.max()):.2f})")

# %%
# The corrected estimates should sit within the NUTS standard error; a large `posterior_k` says the
# correction itself cannot be trusted, and then the guide needs more work (a longer flow, more
# steps, or `base="full"`).
