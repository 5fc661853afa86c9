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
# # MovieLens: ratings in, predictions by original ids out
#
# Needs `ml-latest-small/ratings.csv` (GroupLens; see `../shared/data/README.md` for
# its licence). Set `DSCALEDGD_DATA` to the folder holding `movielens-latest-small`.

# %%
import os

import dscaledgd as dsg

data = os.environ.get("DSCALEDGD_DATA", os.path.join("..", "..", "..", "shared", "data"))
ratings = os.path.join(data, "movielens-latest-small", "ratings.csv")
obs = dsg.Observations.from_csv(ratings, row="userId", col="movieId", value="rating")
train, test = obs.split(0.1, random_state=0)
fit, val = train.split(0.1, random_state=1)
obs

# %% [markdown]
# Ridge, biases and early stopping on the validation split (docs/api.md, "Regularised
# completion on real data"):

# %%
res = dsg.complete(fit, rank=40, reg=0.1, center="biases", validation=val, patience=20,
                   random_state=0)
res

# %%
rmse = res.rmse(test)
print(f"test RMSE {rmse:.3f}")
assert rmse < 0.9

# %%
res.predict([1, 1], [1, 2], by="id")  # userId 1: movies 1 and 2 (NaN for unseen ids)
