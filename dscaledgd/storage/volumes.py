"""Volumes in and out: NIfTI images (nibabel) and videos (imageio) as tensors.

* :func:`read_nifti` is the one NIfTI reader (the CLI's ``import`` uses it too);
  :func:`from_nifti` (``TensorObservations.from_nifti``) builds observations
  from an image, and with ``path=`` streams it into the Zarr store slab by slab
  along its last axis, in file order, so a ``.nii.gz`` is decompressed once
  (nibabel reads a slice of a gzipped image by decompressing from the start).
* :func:`write_nifti` writes a tensor (a fit's low-rank or sparse part) with the
  affine and header of a reference image (``like=``).
* :func:`from_video` (``TensorObservations.from_video``) reads the frames of a
  video or GIF with imageio, one at a time, as a ``(T, H, W)`` gray tensor
  (ITU-R 601 luma) or ``(T, H, W, C)`` with the colour as a mode; with
  ``path=`` the frames go to the store as they are read.

nibabel and imageio are optional (``pip install 'dscaledgd[neuro]'`` /
``'dscaledgd[video]'``); a clear ImportError names the extra.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from ..exceptions import InputDataError, InvalidParameterError
from .layout import check_output_path

__all__ = ["read_nifti", "from_nifti", "write_nifti", "from_video", "LUMA", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: ITU-R BT.601 luma weights (R, G, B): what gray video means in most tools
LUMA = (0.299, 0.587, 0.114)
NEURO_HINT = "pip install 'dscaledgd[neuro]'"
VIDEO_HINT = "pip install 'dscaledgd[video]'"


def _nibabel(what: str):
    try:
        import nibabel
    except ImportError:
        raise ImportError(
            f"{what} needs nibabel, which is not installed. Install the neuro extra: {NEURO_HINT}."
        ) from None
    return nibabel


def _unreadable(path, role: str, exc) -> InputDataError:
    return InputDataError(f"The {role} {os.fspath(path)!r} cannot be read as NIfTI ({exc}).")


def _load(path, role: str):
    nib = _nibabel(f"Reading the NIfTI {role} {os.fspath(path)!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such {role} file: {os.fspath(path)!r} does not exist.")
    try:
        return nib.load(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds; reported with the path
        raise _unreadable(path, role, exc) from None


def read_nifti(path, role: str = "image", *, mask: bool = False) -> np.ndarray:
    """A NIfTI image as a float64 array (``mask``: booleans, nonzero = observed)."""
    img = _load(path, role)
    try:
        if mask:
            return np.asanyarray(img.dataobj) != 0
        return img.get_fdata(dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, role, exc) from None


def _dims(ndim: int) -> tuple:
    return ("x", "y", "z", "t", "u", "v", "w")[:ndim]


def _stream_to_zarr(shape, slabs, tmp: str):
    """A float64 Zarr array at ``tmp`` filled slab by slab along the last axis."""
    import zarr

    last = shape[-1]
    step = max(1, min(last, 16))
    arr = zarr.open_array(tmp, mode="w", shape=shape, dtype="f8",
                          chunks=tuple(shape[:-1]) + (step,))  # fmt: skip
    for k0, slab in slabs:
        arr[..., k0 : k0 + slab.shape[-1]] = slab
    return arr


def from_nifti(path, mask=None, *, chunks=None, layout: str = "auto", store=None,
               overwrite: bool = False):  # fmt: skip
    """``TensorObservations`` from a NIfTI image (:meth:`TensorObservations.from_nifti`)."""
    from .tensors import TensorObservations

    img = _load(path, "image")
    m = None
    if mask is not None:
        m = (
            read_nifti(mask, "mask", mask=True)
            if str(mask).lower().endswith(NIFTI_SUFFIXES)
            else mask
        )
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 2:
        raise InputDataError(
            f"The image {os.fspath(path)!r} has shape {shape}; a tensor needs 2 or more axes."
        )
    dims = _dims(len(shape))
    if store is None:
        X = read_nifti(path, "image")
        try:
            import xarray as xr

            X = xr.DataArray(X, dims=dims)
        except ImportError:
            pass
        return TensorObservations.from_array(X, m, chunks=chunks, layout=layout)
    check_output_path(store, overwrite)
    tmp = tempfile.mkdtemp(prefix=".nifti-", dir=os.path.dirname(os.path.abspath(store)) or ".")
    try:
        step = max(1, min(shape[-1], 16))

        def slabs():
            for k0 in range(0, shape[-1], step):  # in file order: decompressed once
                sl = np.asarray(img.dataobj[..., k0 : k0 + step], dtype=np.float64)
                yield k0, sl

        arr = _stream_to_zarr(shape, slabs(), os.path.join(tmp, "raw.zarr"))
        return TensorObservations.from_array(arr, m, chunks=chunks, layout=layout, path=store,
                                             overwrite=overwrite)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_nifti(X, path, like, *, overwrite: bool = False) -> str:
    """Write the tensor ``X`` (NumPy or Dask) as NIfTI with ``like``'s affine and header.

    ``like`` is a path or a nibabel image whose shape is ``X``'s. The data are
    written as float32 (``like``'s header otherwise kept: the affine, the
    voxel sizes, the units, the descriptions).
    """
    nib = _nibabel("Writing NIfTI")
    ref = like if hasattr(like, "affine") else _load(like, "like")
    shape = tuple(int(n) for n in X.shape)
    if tuple(ref.shape) != shape:
        raise InvalidParameterError(
            f"The 'like' image has shape {tuple(ref.shape)}, not the tensor's {shape}. Pass "
            "the image the data came from."
        )
    if not str(path).lower().endswith(NIFTI_SUFFIXES):
        raise InvalidParameterError(
            f"The 'path' of a NIfTI image must end in .nii or .nii.gz. Got {path!r}."
        )
    path = check_output_path(path, overwrite)
    data = np.asarray(X.compute() if hasattr(X, "compute") else X, dtype=np.float32)
    header = ref.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(data, ref.affine, header)
    tmp = path + ".partial" + (".nii.gz" if path.lower().endswith(".gz") else ".nii")
    nib.save(img, tmp)  # then renamed: never a half-written image at path
    os.replace(tmp, path)
    return path


def _imageio(what: str):
    try:
        import imageio.v3 as iio
    except ImportError:
        raise ImportError(
            f"{what} needs imageio, which is not installed. Install the video extra: {VIDEO_HINT}."
        ) from None
    return iio


def _frame(f, gray: bool) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 3 and f.shape[-1] == 4:  # drop alpha
        f = f[..., :3]
    if gray and f.ndim == 3:
        f = f[..., :3] @ np.asarray(LUMA) if f.shape[-1] >= 3 else f[..., 0]
    return f


def from_video(path, *, gray: bool = True, chunks=None, layout: str = "dense", store=None,
               overwrite: bool = False, max_frames: int | None = None):  # fmt: skip
    """``TensorObservations`` ``(T, H, W)`` (or ``(T, H, W, C)``) from a video's frames."""
    from .tensors import TensorObservations

    iio = _imageio(f"Reading the video {os.fspath(path)!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such video file: {os.fspath(path)!r} does not exist.")
    if store is not None:
        check_output_path(store, overwrite)

    def frames():
        try:
            for t, f in enumerate(iio.imiter(os.fspath(path))):
                if max_frames is not None and t >= max_frames:
                    return
                yield _frame(f, gray)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputDataError(f"The video {os.fspath(path)!r} cannot be read ({exc}).") from None

    it = frames()
    first = next(it, None)
    if first is None:
        raise InputDataError(f"The video {os.fspath(path)!r} has no frame.")
    dims = ("t", "y", "x") + (("c",) if first.ndim == 3 else ())
    if store is None:
        X = np.stack([first, *it])
        try:
            import xarray as xr

            X = xr.DataArray(X, dims=dims)
        except ImportError:
            pass
        return TensorObservations.from_array(X, chunks=chunks, layout=layout)
    import zarr

    tmp = tempfile.mkdtemp(prefix=".video-", dir=os.path.dirname(os.path.abspath(store)) or ".")
    try:
        raw = os.path.join(tmp, "raw.zarr")
        arr = zarr.open_array(raw, mode="w", shape=(0, *first.shape), dtype="f8",
                              chunks=(16, *first.shape))  # fmt: skip
        buf = [first]
        for f in it:  # appended in blocks of 16 frames, in order
            buf.append(f)
            if len(buf) == 16:
                arr.append(np.stack(buf))
                buf = []
        if buf:
            arr.append(np.stack(buf))
        return TensorObservations.from_array(arr, chunks=chunks, layout=layout, path=store,
                                             overwrite=overwrite)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
