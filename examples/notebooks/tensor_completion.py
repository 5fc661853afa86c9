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
# # Tucker tensor completion
#
# A 80 × 70 × 60 tensor of multilinear rank (4, 4, 4), κ = 10, with 90% of its entries
# missing. The fit never forms the full tensor; `res.to_tensor()` is lazy.

# %%
import numpy as np

import dscaledgd as dsg

core, U = dsg.datasets.tucker_instance((80, 70, 60), (4, 4, 4), kappa=10, random_state=0)
X = dsg.datasets.tucker_tensor(core, U)
Y = np.where(dsg.datasets.bernoulli_mask(X.shape, 0.1, random_state=1), X, np.nan)
T = dsg.TensorObservations.from_array(Y)
train, test = T.split(0.1, random_state=0)
T

# %%
res = dsg.tucker_complete(train, ranks=(4, 4, 4), random_state=0)
res

# %%
err = float(np.linalg.norm(res.to_tensor().compute() - X) / np.linalg.norm(X))
print(f"relative error {err:.1e}, test RMSE {res.rmse(test):.1e}")
assert err < 1e-6
