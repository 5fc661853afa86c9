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
# # Video RPCA: background and foreground of a surveillance clip
#
# Needs the I2R escalator clip (`video-escalator-i2r/escalator_data.mat`, research-only
# data; see `../shared/data/README.md`). Each frame is a column of `Y`; the static
# background is low rank, the moving people are sparse.

# %%
import os

import numpy as np
from scipy.io import loadmat

import dscaledgd as dsg

data = os.environ.get("DSCALEDGD_DATA", os.path.join("..", "..", "..", "shared", "data"))
X = loadmat(os.path.join(data, "video-escalator-i2r", "escalator_data.mat"),
            variable_names=["X"])["X"]
Y = np.asarray(X[:, :100], dtype=np.float64) / 255.0  # the first 100 frames, 130×160 each
Y.shape

# %%
res = dsg.rpca(Y, 1, alpha=0.05, max_iter=100, random_state=0)
res

# %%
S = res.compute_sparse()
background = np.asarray(res.L) @ np.asarray(res.R).T
frame = 50
print("foreground pixels in frame", frame, int((np.abs(S[:, frame]) > 0.1).sum()))
assert np.abs(Y - background - S).max() < 1.0

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:  # the plot extra is optional
    plt = None
if plt is not None:
    fig, ax = plt.subplots(1, 3, figsize=(9, 3))
    for a, img, title in zip(ax, (Y, background, np.abs(S)), ("frame", "background", "|S|")):
        a.imshow(img[:, frame].reshape(130, 160, order="F"), cmap="gray")
        a.set_title(title)
        a.axis("off")
