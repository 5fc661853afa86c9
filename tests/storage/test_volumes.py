"""Volumes in and out (issue 17): NIfTI (affine and header kept), video (frame order kept),
TensorLy / pyttb / xarray round trips, and the warm start from another fit."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InputDataError, InvalidParameterError

from ..conftest import DATA_DIR

nib = pytest.importorskip("nibabel")

EXAMPLE4D = os.path.join(DATA_DIR, "neuro-nibabel-testdata", "example4d.nii.gz")
AFFINE = np.array([[2.0, 0.1, 0, -90], [0, 2.5, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])


def _volume(shape=(12, 10, 8), seed=0):
    core, U = dsg.datasets.tucker_instance(shape, (2, 2, 2), random_state=seed)
    return dsg.datasets.tucker_tensor(core, U)


def _save(X, path):
    img = nib.Nifti1Image(X.astype(np.float32), AFFINE)
    img.header["descrip"] = b"dscaledgd test volume"
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return str(path)


@pytest.mark.parametrize("streamed", [False, True])
def test_nifti_in_and_out_keeps_affine_and_header(tmp_path, streamed):
    X = _volume()
    src = _save(X, tmp_path / "vol.nii.gz")
    store = str(tmp_path / "vol.zarr") if streamed else None
    T = dsg.TensorObservations.from_nifti(src, chunks=(6, 5, 4), store=store)
    assert T.shape == X.shape and (T.path is not None) == streamed
    np.testing.assert_allclose(T.to_dask().compute(), X.astype(np.float32), rtol=0, atol=0)
    if not streamed:
        assert T.dims == ("x", "y", "z")
    res = dsg.tucker_complete(T, (2, 2, 2), scheduler="sync", random_state=0, progress=False)
    out = res.to_nifti(str(tmp_path / "fit.nii.gz"), like=src)
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, nib.load(src).affine)
    assert back.header["descrip"] == nib.load(src).header["descrip"]
    assert back.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(back.get_fdata(), res.to_tensor().compute(), rtol=1e-6, atol=1e-6)


def test_nifti_bad_input(tmp_path):
    X = _volume()
    src = _save(X, tmp_path / "vol.nii")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dsg.TensorObservations.from_nifti(str(tmp_path / "missing.nii"))
    (tmp_path / "junk.nii").write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="cannot be read as NIfTI"):
        dsg.TensorObservations.from_nifti(str(tmp_path / "junk.nii"))
    res = dsg.tucker_complete(X, (2, 2, 2), scheduler="sync", random_state=0, progress=False)
    with pytest.raises(InvalidParameterError, match="must end in .nii"):
        res.to_nifti(str(tmp_path / "fit.npy"), like=src)
    other = _save(_volume((12, 10, 9)), tmp_path / "other.nii")
    with pytest.raises(InvalidParameterError, match="not the tensor's"):
        res.to_nifti(str(tmp_path / "fit.nii"), like=other)
    assert not os.path.exists(tmp_path / "fit.nii")
    with pytest.raises(ValueError, match="no sparse part"):
        res.to_nifti(str(tmp_path / "fit.nii"), like=src, part="sparse")


def test_tensor_rpca_sparse_part_to_nifti(tmp_path):
    X = _volume((14, 12, 10), seed=1)
    rng = np.random.default_rng(0)
    salt = rng.random(X.shape) < 0.05
    Y = np.where(salt, np.where(rng.random(X.shape) < 0.5, X.min(), X.max()) * 3, X)
    src = _save(Y, tmp_path / "noisy.nii.gz")
    T = dsg.TensorObservations.from_nifti(src)
    res = dsg.tensor_rpca(T, (2, 2, 2), scheduler="sync", random_state=0, progress=False)
    out = res.to_nifti(str(tmp_path / "sparse.nii.gz"), like=src, part="sparse")
    S = nib.load(out).get_fdata()
    assert np.array_equal(S != 0, salt)


@pytest.mark.skipif(not os.path.exists(EXAMPLE4D), reason=f"needs {EXAMPLE4D} (shared data)")
def test_real_4d_nifti_streamed_to_a_store(tmp_path):
    ref = nib.load(EXAMPLE4D).get_fdata(dtype=np.float64)
    T = dsg.TensorObservations.from_nifti(EXAMPLE4D, store=str(tmp_path / "ex4d.zarr"))
    assert T.shape == (128, 96, 24, 2) and T.path is not None
    np.testing.assert_array_equal(T.to_dask().compute(), ref)


# ------------------------------------------------------------------ video
iio = pytest.importorskip("imageio.v3")


def _gif(path, T=9, H=12, W=16, color=False):
    frames = []
    for t in range(T):
        f = np.full((H, W, 3), 10 * t, dtype=np.uint8)
        f[..., 1] = 5 * t
        frames.append(f if color else f[..., 0])
    iio.imwrite(str(path), np.stack(frames), extension=".gif", loop=0)
    return str(path), np.stack(frames)


@pytest.mark.parametrize("streamed", [False, True])
def test_video_frames_in_order(tmp_path, streamed):
    path, frames = _gif(tmp_path / "clip.gif", T=20)
    store = str(tmp_path / "clip.zarr") if streamed else None
    T = dsg.TensorObservations.from_video(path, store=store)
    Y = T.to_dask().compute()
    assert Y.shape == (20, 12, 16)
    np.testing.assert_allclose(Y[:, 0, 0], 10.0 * np.arange(20), atol=1.0)


def test_video_colour_kept_as_a_mode_or_converted_to_gray(tmp_path):
    path, frames = _gif(tmp_path / "clip.gif", color=True)
    C = dsg.TensorObservations.from_video(path, gray=False)
    assert C.shape == (9, 12, 16, 3)
    G = dsg.TensorObservations.from_video(path).to_dask().compute()
    rgb = C.to_dask().compute()
    np.testing.assert_allclose(G, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dsg.TensorObservations.from_video(str(tmp_path / "none.mp4"))


# ------------------------------------------------------------------ other libraries
@pytest.mark.filterwarnings("ignore::dscaledgd.ConvergenceWarning")  # the one-iteration runs
def test_tensorly_pyttb_and_xarray_round_trips():
    xr = pytest.importorskip("xarray")
    X = _volume()
    Y = X + np.where(np.random.default_rng(0).random(X.shape) < 0.05, 3.0, 0.0)
    data = xr.DataArray(Y, dims=("x", "y", "z"))
    res = dsg.tensor_rpca(data, (2, 2, 2), scheduler="sync", random_state=0, progress=False)
    assert res.to_xarray().dims == ("x", "y", "z")
    tt = res.to_tensorly()
    import tensorly as tl

    np.testing.assert_allclose(tl.tucker_to_tensor(tt), res.to_tensor().compute(), atol=1e-12)
    pytest.importorskip("pyttb")
    np.testing.assert_allclose(res.to_pyttb().full().double(), res.to_tensor().compute(),
                               atol=1e-12)  # fmt: skip
    # a TuckerTensor, and a fitted model, are warm starts
    for init in (tt, res.model):
        again = dsg.tensor_rpca(Y, (2, 2, 2), init=init, max_iter=1, scheduler="sync",
                                progress=False, threshold_scale=1.0)  # fmt: skip
        assert again.info["init_passes"] == 0
