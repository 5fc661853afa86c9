# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # dscaledgd quick start: complete an ill-conditioned matrix
#
# A 1000 × 800 matrix of rank 5 with condition number κ = 100, 20% of its entries
# observed. ScaledGD's iteration count does not grow with κ; plain gradient descent's
# does. With no `client`, the fit runs on a thread pool in this kernel (as `dask.array`
# does); pass `client=` to run on a cluster and watch the dashboard.

# %%
import numpy as np

import dscaledgd as dsg

obs, truth = dsg.datasets.make_completion((1000, 800), 5, 0.2, cond=100, random_state=0)
train, test = obs.split(0.1, random_state=0)
obs

# %%
res = dsg.complete(train, rank=5, random_state=0)
res  # in Jupyter: status, iterations, factor shapes and chunks, the loss curve

# %%
print("relative error", truth.relative_error(*res.compute_factors()))
print("test RMSE", res.rmse(test))
assert res.converged and truth.relative_error(*res.compute_factors()) < 1e-6

# %% [markdown]
# The same with plain gradient descent, for comparison (capped at 300 iterations):

# %%
gd = dsg.complete(train, rank=5, method="gd", max_iter=300, random_state=0)
print(f"ScaledGD: {res.n_iter} iterations; GD: {gd.n_iter} ({gd.status}), "
      f"relative error {truth.relative_error(*gd.compute_factors()):.1e}")

# %% [markdown]
# The scikit-learn-style estimator does the same:

# %%
est = dsg.MatrixCompletion(rank=5, random_state=0).fit(train)
est.n_iter_, est.predict(np.array([0, 1]), np.array([0, 1]))
