"""TensorObservations: construction, layouts, split, Zarr round trips and integrity."""

from __future__ import annotations

import os
import pickle
import shutil

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from dscaledgd import InputDataError, InvalidParameterError, Observations
from dscaledgd.exceptions import DataWarning
from dscaledgd.storage import tensor_store, tensors
from dscaledgd.storage.chunk_formats import coo_to_dense, unpack_dense
from dscaledgd.storage.tensor_store import default_chunks
from dscaledgd.storage.tensors import DENSE_MIN_DENSITY, TensorObservations, load_chunk

from ..conftest import edit_store_attrs

T = TensorObservations
SHAPES = {3: ((7, 6, 5), (3, 4, 2)), 4: ((5, 4, 3, 4), (2, 3, 3, 2))}


def _tensor(rng, shape, p=0.4):
    X = rng.standard_normal(shape)
    X[rng.random(shape) >= p] = np.nan
    return X


def _dense(x) -> np.ndarray:
    """A chunk in either kernel format as a dense array."""
    return x if isinstance(x, np.ndarray) else coo_to_dense(x)


def _entries(t: TensorObservations) -> dict:
    idx, vals = t.observed()
    return {tuple(int(i) for i in row): float(v) for row, v in zip(idx, vals)}


def _check_matches(t: TensorObservations, X: np.ndarray) -> None:
    """Every view of ``t`` (chunks, observed set, Dask array, statistics) equals ``X``."""
    obs = ~np.isnan(X)
    assert t.shape == X.shape and t.ndim == X.ndim and t.nnz == obs.sum()
    assert t.density == pytest.approx(obs.mean(), rel=1e-15)
    assert t.value_norm2 == pytest.approx(float(np.nansum(X**2)), rel=1e-13)
    for k in range(X.ndim):
        other = tuple(j for j in range(X.ndim) if j != k)
        np.testing.assert_array_equal(t.mode_counts[k], obs.sum(axis=other))
    assert [len(b) - 1 for b in t.bounds] == list(t.grid) and len(t.chunks) == X.ndim
    assert t.n_chunks == np.prod(t.grid)
    for c in range(t.n_chunks):
        sl = t.chunk_slices(c)
        assert t.chunk_index(c) == tuple(int(i) for i in np.unravel_index(c, t.grid))
        np.testing.assert_array_equal(_dense(t.read_chunk(c)), X[sl])
        x = t.read_chunk(c)
        if t.layout == "coo":
            index, values, shape = x
            assert index.dtype == np.int32 and values.dtype == np.float64
            assert shape == X[sl].shape and index.shape == (len(values), X.ndim)
            lin = np.ravel_multi_index(tuple(index.T), shape)
            assert np.all(np.diff(lin) > 0)  # C-order sorted, no repeats
        else:
            assert x.dtype == np.float64 and x.flags.c_contiguous
    assert _entries(t) == {tuple(map(int, i)): float(X[tuple(i)]) for i in np.argwhere(obs)}
    np.testing.assert_array_equal(t.to_dask().compute(), X)
    assert t.to_dask().chunks == t.chunks


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("layout", ["dense", "coo"])
@pytest.mark.parametrize("source", ["numpy", "dask", "zarr", "npy", "npz"])
def test_round_trip(rng, tmp_path, order, layout, source):
    shape, cs = SHAPES[order]
    X = _tensor(rng, shape)
    if source == "dask":
        inp = da.from_array(X, chunks=cs)
    elif source == "zarr":
        inp = zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=cs, dtype="f8")
        inp[...] = X
    elif source in ("npy", "npz"):  # a .npz with one array: saved as 'arr_0'
        inp = str(tmp_path / f"in.{source}")
        getattr(np, "save" if source == "npy" else "savez")(inp, X)
    else:
        inp = X
    chunks = None if source in ("dask", "zarr") else cs  # those default to their own chunks
    t = T.from_array(inp, chunks=chunks, layout=layout)
    assert t.layout == layout and t.path is None
    assert t.chunks == da.empty(shape, chunks=cs).chunks
    _check_matches(t, X)
    path = t.to_zarr(str(tmp_path / "t.zarr"))
    with T.open_zarr(path) as back:
        assert back.layout == layout and back.path == os.path.abspath(path)
        assert back.store_id != t.store_id and len(back.store_id) == 32
        _check_matches(back, X)
        for c in range(back.n_chunks):
            ref = back.chunk_ref(c)
            assert pickle.loads(pickle.dumps(ref)) == ref
            np.testing.assert_array_equal(_dense(back.read_chunk(c)), _dense(load_chunk(ref)))
        # streamed straight to a store from the source
        direct = T.from_array(inp, chunks=chunks, layout=layout, path=str(tmp_path / "d.zarr"))
        assert direct.path is not None
        _check_matches(direct, X)


@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("layout", ["dense", "coo"])
def test_from_coo_and_layout_conversions_keep_the_observed_set(rng, tmp_path, order, layout):
    shape, cs = SHAPES[order]
    X = _tensor(rng, shape, p=0.3)
    idx = np.argwhere(~np.isnan(X))
    perm = rng.permutation(len(idx))  # any input order
    t = T.from_coo(idx[perm], X[tuple(idx[perm].T)], shape, chunks=cs, layout=layout)
    assert t.layout == layout
    _check_matches(t, X)
    other = "coo" if layout == "dense" else "dense"
    conv = t.to_layout(other)
    assert conv.layout == other and conv.chunks == t.chunks
    assert _entries(conv) == _entries(t) and conv.value_norm2 == t.value_norm2
    back = conv.to_layout(layout, path=str(tmp_path / "b.zarr"))
    assert back.path and _entries(back) == _entries(t)
    ref = T.from_array(X, chunks=cs, layout=other)
    assert _entries(ref) == _entries(t) and ref.value_norm2 == t.value_norm2


def test_mask_and_npz_mask(rng, tmp_path):
    X = rng.standard_normal((6, 5, 4))
    mask = rng.random(X.shape) < 0.5
    Y = X.copy()
    Y[~mask] = np.inf  # values outside the mask are ignored, whatever they are
    expect = np.where(mask, X, np.nan)
    _check_matches(T.from_array(Y, mask, chunks=(3, 5, 2)), expect)
    _check_matches(T.from_array(da.from_array(Y, chunks=3), da.from_array(mask, chunks=2)), expect)
    np.savez(tmp_path / "xm.npz", X=Y, mask=mask)
    _check_matches(T.from_array(str(tmp_path / "xm.npz"), layout="coo"), expect)
    np.save(tmp_path / "m.npy", mask)
    _check_matches(T.from_array(Y, str(tmp_path / "m.npy")), expect)
    with pytest.raises(InvalidParameterError, match="'mask' parameter of from_array"):
        T.from_array(str(tmp_path / "xm.npz"), mask)


@pytest.mark.parametrize("dtype", ["int64", "int8", "float32"])
def test_non_float64_input_is_converted_with_a_warning(rng, dtype):
    X = rng.integers(-5, 5, size=(4, 3, 5)).astype(dtype)
    with pytest.warns(DataWarning, match=f"dtype {dtype}.*computed in float64"):
        t = T.from_array(X, chunks=2)
    assert t.source_dtype == dtype and t.read_chunk(0).dtype == np.float64
    _check_matches(t, X.astype(np.float64))
    with pytest.warns(DataWarning, match="computed in float64"):
        t = T.from_coo(np.argwhere(X == X), X.ravel(), X.shape)
    assert t.source_dtype == dtype


def test_xarray_input_keeps_dims(rng, tmp_path):
    xr = pytest.importorskip("xarray")
    X = _tensor(rng, (4, 5, 6))
    t = T.from_array(xr.DataArray(X, dims=("user", "item", "time")), chunks=2)
    assert t.dims == ("user", "item", "time")
    assert T.open_zarr(t.to_zarr(str(tmp_path / "x.zarr"))).dims == t.dims


def test_order_two_dims_and_repr(rng, tmp_path):
    X = _tensor(rng, (8, 9))  # order 2 is accepted too
    _check_matches(T.from_array(X, chunks=(3, 4)), X)
    t = T.from_array(_tensor(rng, (4, 5, 6)), chunks=2)
    assert t.dims is None and "in memory" in repr(t) and "shape=(4, 5, 6)" in repr(t)
    back = T.open_zarr(t.to_zarr(str(tmp_path / "x.zarr")))
    assert back.dims is None and "store=" in repr(back)
    for fn in (t.read_chunk, t.chunk_index, t.chunk_slices):
        with pytest.raises(InvalidParameterError, match=r"'c' parameter of .* must be an int in"):
            fn(t.n_chunks)
    with pytest.raises(InvalidParameterError, match="chunk_ref needs a store-backed"):
        t.chunk_ref(0)


# ----------------------------------------------------------------- layout
def test_layout_auto_switches_at_the_threshold(rng):
    shape = (10, 10, 10)
    n = int(DENSE_MIN_DENSITY * 1000)
    for nnz, layout in ((n, "dense"), (n - 1, "coo")):
        X = np.full(shape, np.nan)
        X.flat[rng.choice(1000, nnz, replace=False)] = 1.0
        assert T.from_array(X).layout == layout
        assert T.from_array(da.from_array(X, chunks=5)).layout == layout
        assert T.from_coo(np.argwhere(X == 1), np.ones(nnz), shape, layout="auto").layout == layout
    assert T.from_array(X, layout="dense").layout == "dense"  # explicit overrides


def test_default_chunks():
    # small tensors stay whole; large ones are split to <= 16 MB chunks, a few per thread
    assert default_chunks((7, 6, 5), nthreads=2) == (7, 6, 5)
    for shape, nthreads in (((1000, 1000, 1000), 2), ((200, 300, 100), 16), ((64,) * 4, 2)):
        cs = default_chunks(shape, nthreads=nthreads)
        n_chunks = np.prod([-(-n // s) for n, s in zip(shape, cs)])
        nbytes = 8 * np.prod(cs)
        assert nbytes <= tensor_store.TARGET_CHUNK_BYTES
        few = n_chunks < tensor_store.CHUNKS_PER_THREAD * nthreads
        assert not few or nbytes < 2 * tensor_store.MIN_SPLIT_BYTES
    cs = default_chunks((400, 400, 400), nthreads=1)
    assert all(2 <= -(-400 // s) <= 4 for s in cs)  # about 2-4 chunks per mode
    # coo: sized by the entries expected per chunk
    assert np.prod(default_chunks((1000,) * 3, 20 * 1e-3)) > np.prod(default_chunks((1000,) * 3))


def test_chunk_defaults_follow_the_input(rng, tmp_path):
    X = _tensor(rng, (9, 8, 7))
    z = zarr.create_array(str(tmp_path / "z.zarr"), shape=X.shape, chunks=(4, 8, 3), dtype="f8")
    z[...] = X
    assert T.from_array(z).chunks == ((4, 4, 1), (8,), (3, 3, 1))
    assert T.from_array(str(tmp_path / "z.zarr")).chunks == ((4, 4, 1), (8,), (3, 3, 1))
    irregular = da.from_array(X, chunks=((3, 4, 2), (8,), (7,)))
    t = T.from_array(irregular)
    assert t.chunks == ((4, 4, 1), (8,), (7,))  # regularised: the largest per mode
    _check_matches(t, X)
    assert T.from_array(X, chunks=(-1, None, 4)).chunks == ((9,), (8,), (4, 3))


# ------------------------------------------------------------------ split
@pytest.mark.parametrize("layout", ["dense", "coo"])
def test_split(rng, tmp_path, layout):
    X = _tensor(rng, (8, 7, 6), p=0.6)
    t = T.from_array(X, chunks=(3, 4, 6), layout=layout)
    train, test = t.split(test_fraction=0.25, random_state=0)
    assert test.nnz == round(0.25 * t.nnz) and train.nnz + test.nnz == t.nnz
    assert train.chunks == test.chunks == t.chunks and train.shape == test.shape == t.shape
    dense_test = layout == "dense" and test.density >= DENSE_MIN_DENSITY
    assert train.layout == layout and test.layout == ("dense" if dense_test else "coo")
    assert t.split(0.01, random_state=0)[1].layout == "coo"  # usually: sparse enough
    a, b = _entries(train), _entries(test)
    assert not set(a) & set(b) and {**a, **b} == _entries(t)
    assert train.value_norm2 + test.value_norm2 == pytest.approx(t.value_norm2, rel=1e-13)
    for k in range(3):
        np.testing.assert_array_equal(train.mode_counts[k] + test.mode_counts[k], t.mode_counts[k])
    # deterministic, independent of the layout and of where the data live
    other = t.to_layout("coo" if layout == "dense" else "dense")
    stored = T.open_zarr(t.to_zarr(str(tmp_path / "s.zarr")))
    for src in (t, other, stored):
        tr2, te2 = src.split(test_fraction=0.25, random_state=0)
        assert _entries(te2) == b and _entries(tr2) == a
    assert _entries(t.split(0.25, random_state=1)[1]) != b
    rs = np.random.default_rng(3)
    assert set(_entries(t.split(0.5, random_state=rs)[1])) <= set(_entries(t))


def test_split_refuses_bad_fractions(rng):
    t = T.from_array(_tensor(rng, (4, 4, 4)), chunks=2)
    for f in (0.0, 1.0, -0.1, 1e-9, "0.1"):
        with pytest.raises(InvalidParameterError, match="'test_fraction' parameter of split"):
            t.split(f)
    with pytest.raises(InvalidParameterError, match="random_state"):
        t.split(0.2, random_state=-1)


# ------------------------------------------------------- dask out of core
def test_dask_input_is_written_chunk_by_chunk(rng, tmp_path, monkeypatch):
    X = _tensor(rng, (9, 8, 6))
    calls, batches, compute = [], [], dask.compute

    def block(x, block_info=None):  # records each block it makes
        calls.append(block_info[0]["chunk-location"])
        return x

    def whole(*a, **k):
        raise AssertionError("the whole Dask array was materialised")

    def batch(xs, ms):  # dask.compute, recording how many chunks each call computes
        batches.append(len(xs))
        return compute(xs, ms)

    Xd = da.from_array(X, chunks=(3, 4, 3)).map_blocks(block, dtype=np.float64)
    monkeypatch.setattr(da.Array, "__array__", whole)
    monkeypatch.setattr(dask, "compute", batch)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    monkeypatch.setattr(tensors, "_physical_memory", lambda: 1000)  # "larger than memory"
    with pytest.raises(InvalidParameterError, match="'path' parameter of from_array.*chunk by"):
        T.from_array(Xd, layout="dense")
    assert calls == []
    t = T.from_array(Xd, layout="coo", path=str(tmp_path / "big.zarr"))
    assert sorted(calls) == list(np.ndindex(3, 2, 2))  # each block computed once
    assert batches == [5, 5, 2]  # one chunk per CPU thread at a time
    assert t.path and t.chunks == ((3, 3, 3), (4, 4), (3, 3))
    monkeypatch.undo()
    _check_matches(t, X)


# ------------------------------------------------------------- bad inputs
def _no_output(tmp_path) -> None:
    assert [p for p in os.listdir(tmp_path) if "out" in p] == []


BAD_ARRAYS = [
    (lambda X: (X, np.ones((4, 5, 5), bool)), InputDataError, r"mask has shape \(4, 5, 5\)"),
    (lambda X: (X, np.ones(X.shape, int)), InputDataError, "mask. parameter of from_array must be"),
    (lambda X: (np.full(X.shape, np.nan), None), InputDataError, "no observed entry"),
    (lambda X: (X, np.zeros(X.shape, bool)), InputDataError, "no observed entry"),
    (lambda X: (_set(X, (3, 4, 5), np.inf), None), InputDataError, r"X\[3, 4, 5\] = inf"),
    (
        lambda X: _set(X, (0, 1, 2), np.nan, True),
        InputDataError,
        r"X\[0, 1, 2\] = nan is not finite",
    ),
    (lambda X: (X[:, 0, 0], None), InputDataError, "order >= 2"),
    (lambda X: (X.astype(str), None), InputDataError, "must hold real numbers"),
    (lambda X: (X > 0, None), InputDataError, "is it the mask"),
]


def _set(X, where, v, mask=False):
    """``X`` with ``v`` at ``where``; with ``mask``, also the mask of X's other values."""
    X, obs = X.copy(), ~np.isnan(X)
    X[where], obs[where] = v, True
    return (X, obs) if mask else X


@pytest.mark.parametrize("make, exc, match", BAD_ARRAYS)
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_bad_arrays_are_refused_and_nothing_is_written(rng, tmp_path, make, exc, match, backend):
    X, mask = make(_tensor(rng, (4, 5, 6), p=0.7))
    if backend == "dask" and X.dtype.kind != "U":
        X = da.from_array(X, chunks=2)
    for layout in ("auto", "dense", "coo"):
        with pytest.raises(exc, match=match):
            T.from_array(X, mask, layout=layout, path=str(tmp_path / "out.zarr"))
        _no_output(tmp_path)


@pytest.mark.parametrize(
    "chunks, match",
    [
        (((2, 2), (4,), (6,)), "mode 1's chunks sum to 4, not 5"),
        (((2, 2), (2, 3), (6,)), "mode 1's chunks .* are not regular"),
        ((2, 3), r"Got \(2, 3\)\."),
        (0, "chunk size 0 is not positive"),
        ("auto", "Got 'auto'"),
        (((2.5, 1.5), 5, 6), "mode 0's entry"),
    ],
)
def test_bad_chunks(rng, tmp_path, chunks, match):
    X = _tensor(rng, (4, 5, 6))
    with pytest.raises(InvalidParameterError, match=r"The 'chunks' parameter of from_array"):
        T.from_array(X, chunks=chunks, path=str(tmp_path / "out.zarr"))
    with pytest.raises(InvalidParameterError, match=match):
        T.from_array(X, chunks=chunks)
    with pytest.raises(InvalidParameterError, match="'chunks' parameter of from_coo"):
        T.from_coo(np.zeros((1, 3), int), [1.0], (4, 5, 6), chunks=chunks)
    _no_output(tmp_path)


def test_bad_layout_and_paths(rng, tmp_path):
    X = _tensor(rng, (4, 5, 6))
    with pytest.raises(InvalidParameterError, match="'layout' parameter of from_array"):
        T.from_array(X, layout="sparse")
    with pytest.raises(InvalidParameterError, match="'layout' parameter of to_layout"):
        T.from_array(X).to_layout("auto")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.from_array(str(tmp_path / "nope.npy"))
    np.savez(tmp_path / "two.npz", a=X, b=X)
    with pytest.raises(InputDataError, match=r"holds the arrays \['a', 'b'\]"):
        T.from_array(str(tmp_path / "two.npz"))
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(InputDataError, match="not a .npy file, a .npz file or a Zarr array"):
        T.from_array(str(tmp_path / "junk.txt"))
    store = T.from_array(X).to_zarr(str(tmp_path / "g.zarr"))
    with pytest.raises(InputDataError, match="is a Zarr group.*open_zarr"):
        T.from_array(store)


def test_existing_output_path_is_refused(rng, tmp_path):
    X = _tensor(rng, (4, 5, 6))
    t = T.from_array(X, chunks=2)
    path = t.to_zarr(str(tmp_path / "out.zarr"))
    sid = T.open_zarr(path).store_id
    for fn in (
        lambda: t.to_zarr(path),
        lambda: T.from_array(X, path=path),
        lambda: T.from_coo(np.zeros((1, 3), int), [1.0], X.shape, path=path),
        lambda: t.to_layout("coo", path=path),
    ):
        with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
            fn()
    assert T.open_zarr(path).store_id == sid
    t.to_zarr(path, overwrite=True)
    assert T.open_zarr(path).store_id != sid


def test_bad_value_midway_through_a_stream_leaves_nothing(rng, tmp_path):
    X = _tensor(rng, (6, 6, 6), p=0.9)
    X[5, 5, 5] = -np.inf  # in the last chunk: earlier chunks were already written
    for layout in ("dense", "coo"):
        with pytest.raises(InputDataError, match=r"X\[5, 5, 5\] = -inf is not finite"):
            T.from_array(da.from_array(X, chunks=2), layout=layout, path=str(tmp_path / "out"))
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "indices, values, shape, exc, match",
    [
        ([[0, 0, 0], [3, 4, 6]], [1.0, 2.0], (4, 5, 6), InputDataError, r"indices\[1\] = \(3, 4, 6\) is out of range along mode 2"),
        ([[0, -1, 0]], [1.0], (4, 5, 6), InputDataError, r"indices\[0\] = \(0, -1, 0\) is negative along mode 1"),
        ([[0.0, 1.0, 2.0]], [1.0], (4, 5, 6), InputDataError, "indices must hold integers"),
        ([[0, 1]], [1.0], (4, 5, 6), InputDataError, r"shape \(m, 3\)"),
        ([[0, 1, 2], [3, 3, 3], [0, 1, 2]], [1.0, 2.0, 3.0], (4, 5, 6), InputDataError, r"Duplicate entry \(0, 1, 2\) at positions 0 and 2"),
        ([[0, 1, 2]], [np.nan], (4, 5, 6), InputDataError, r"values\[0\] = nan at index \(0, 1, 2\) is not finite"),
        ([[0, 1, 2]], [1.0, 2.0], (4, 5, 6), InputDataError, "values must hold 1 real numbers"),
        (np.zeros((0, 3), int), [], (4, 5, 6), InputDataError, "no observed entry"),
        ([[0]], [1.0], (4,), InvalidParameterError, "'shape' parameter of from_coo"),
        ([[0, 0, 0]], [1.0], (4, 0, 6), InvalidParameterError, "'shape' parameter of from_coo"),
        ([[0, 0, 0]], [1.0], "456", InvalidParameterError, "'shape' parameter of from_coo"),
    ],
)  # fmt: skip
def test_bad_coo(tmp_path, indices, values, shape, exc, match):
    with pytest.raises(exc, match=match):
        T.from_coo(np.asarray(indices), np.asarray(values), shape, path=str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------- store integrity
@pytest.fixture(params=["dense", "coo"])
def store(request, rng, tmp_path):
    X = _tensor(rng, (6, 5, 4), p=0.6)
    t = T.from_array(X, chunks=(3, 3, 2), layout=request.param)
    return X, t.to_zarr(str(tmp_path / "t.zarr"))


FLIP = {"dense": "coo", "coo": "dense"}


def _entry_chunk_file(path, layout):
    """The data chunk file holding (the first) entries of tensor chunk 0."""
    return os.path.join(path, "values", "c", *(["0"] * (3 if layout == "dense" else 1)))


def test_store_attrs_checksums_and_kind(store):
    X, path = store
    meta = zarr.open_group(path, mode="r").attrs["dscaledgd"]
    assert meta["type"] == "tensor_observations" and meta["digest"].startswith("sha256:")
    assert meta["nnz"] == int((~np.isnan(X)).sum()) and meta["shape"] == [6, 5, 4]
    for name in zarr.open_group(path, mode="r").array_keys():
        arr = zarr.open_array(os.path.join(path, name), mode="r")
        assert any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs), name


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda m: m.__setitem__("nnz", m["nnz"] + 1),
            "'chunk_ptr' does not run|'values' has shape",
        ),
        (lambda m: m.__setitem__("nnz", "12"), r"attribute 'nnz' is '12' \(a str\)"),
        (lambda m: m.__setitem__("value_norm2", m["value_norm2"] * 2), "fails its integrity"),
        (lambda m: m.__setitem__("store_id", "0" * 32), "fails its integrity"),
        (lambda m: m.pop("chunk_shape"), "attribute 'chunk_shape' is missing"),
        (lambda m: m.__setitem__("chunk_shape", [3, 3]), "attribute 'chunk_shape' is"),
        (lambda m: m.__setitem__("shape", [6, 5, 0]), "attribute 'shape' is"),
        (lambda m: m.__setitem__("layout", "sparse"), "attribute 'layout' is 'sparse'"),
        (lambda m: m.__setitem__("format_version", 99), "format_version.*upgrade"),
        (lambda m: m.__setitem__("type", "something"), "not a dscaledgd TensorObservations"),
        (lambda m: m.__setitem__("dims", ["a"]), r"attribute 'dims' is \['a'\]"),
        (lambda m: m.update(layout=FLIP[m["layout"]]), "'values' has shape|are missing"),
        (lambda m: m.update(chunk_shape=[2, 3, 2]), "'values' has chunks|'chunk_ptr' has shape"),
        (lambda m: m.update(chunk_shape=[3, 3, 3]), "has chunks|'mode_counts' sums"),  # same grid
    ],
)
def test_open_refuses_edited_attrs(store, edit, match):
    _, path = store
    edit_store_attrs(path, edit)
    with pytest.raises(InputDataError, match=match):
        T.open_zarr(path)


def test_open_refuses_truncated_stores(store):
    _, path = store
    layout = T.open_zarr(path).layout
    os.remove(os.path.join(path, "chunk_ptr", "c", "0"))
    with pytest.raises(InputDataError, match=r"is truncated: array 'chunk_ptr' has 0 of 1"):
        T.open_zarr(path)
    with open(_entry_chunk_file(path, layout), "r+b") as fh:
        fh.truncate(8)
    with pytest.raises(InputDataError, match="is truncated: .* has a chunk of 8 bytes"):
        T.open_zarr(path)


def test_open_refuses_missing_arrays_and_foreign_paths(store, tmp_path):
    _, path = store
    shutil.rmtree(os.path.join(path, "mode_counts"))
    with pytest.raises(InputDataError, match=r"is truncated: arrays \['mode_counts'\] are missing"):
        T.open_zarr(path)
    with pytest.raises(FileNotFoundError, match="No TensorObservations store"):
        T.open_zarr(str(tmp_path / "nowhere"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputDataError, match="not a dscaledgd TensorObservations store"):
        T.open_zarr(str(tmp_path / "plain"))


def test_matrix_and_tensor_stores_are_not_mistaken(rng, tmp_path, store):
    _, tpath = store
    obs = Observations.from_coo([0, 1, 2], [0, 1, 0], [1.0, 2.0, 3.0], shape=(3, 2))
    mpath = obs.to_zarr(str(tmp_path / "m.zarr"))
    with pytest.raises(InputDataError, match="is a matrix Observations store.*Observations.open"):
        T.open_zarr(mpath)
    with pytest.raises(InputDataError, match="not a dscaledgd Observations store"):
        Observations.open_zarr(tpath)


@pytest.mark.parametrize("damage", ["garbled", "deleted"])
def test_chunk_damaged_after_open_is_refused_at_read(store, damage):
    _, path = store
    t = T.open_zarr(path)
    f = _entry_chunk_file(path, t.layout)
    if damage == "deleted":
        os.remove(f)
    else:  # same size on disk: found when decoded
        with open(f, "r+b") as fh:
            fh.seek(3)
            fh.write(b"\x12\x34\x56")
    match = "cannot be decoded" if damage == "garbled" else "is missing: it was deleted after"
    copy = path + ".copy"
    for fn in (
        lambda: t.read_chunk(0),
        lambda: load_chunk(t.chunk_ref(0)),
        lambda: t.to_zarr(copy),
    ):
        with pytest.raises(InputDataError, match=match):
            fn()
    assert not os.path.exists(copy)  # no laundering by copy


def test_edited_entries_are_refused_at_read(rng, tmp_path):
    X = _tensor(rng, (6, 5, 4), p=0.6)
    X[0, 0, 0] = 1.0
    dense = T.from_array(X, chunks=(3, 3, 2), layout="dense").to_zarr(str(tmp_path / "d"))
    values = zarr.open_array(os.path.join(dense, "values"), mode="r+")
    values[0, 0, 0] = np.inf
    with pytest.raises(InputDataError, match=r"non-finite value inf at local index \(0, 0, 0\)"):
        T.open_zarr(dense).read_chunk(0)
    values[0, 0, 0] = np.nan  # one observed entry fewer than chunk_ptr records
    with pytest.raises(InputDataError, match="holds .* observed entries; chunk_ptr records"):
        T.open_zarr(dense).read_chunk(0)
    coo = T.from_array(X, chunks=(3, 3, 2), layout="coo").to_zarr(str(tmp_path / "c"))
    index = zarr.open_array(os.path.join(coo, "index"), mode="r+")
    values = zarr.open_array(os.path.join(coo, "values"), mode="r+")
    index[1, 2] = 2
    with pytest.raises(InputDataError, match=r"'index' of chunk 0 .* outside the chunk's shape"):
        T.open_zarr(coo).read_chunk(0)
    index[1] = index[0]
    with pytest.raises(InputDataError, match="not sorted without repeats"):
        T.open_zarr(coo).read_chunk(0)
    index[1] = T.from_array(X, chunks=(3, 3, 2), layout="coo").read_chunk(0)[0][1]
    values[0] = np.nan
    with pytest.raises(InputDataError, match="'values' of chunk 0 .*non-finite value nan"):
        T.open_zarr(coo).read_chunk(0)
    T.open_zarr(coo).read_chunk(1)  # other chunks read fine


def test_store_replaced_while_in_use_is_refused(rng, tmp_path):
    X = _tensor(rng, (6, 5, 4))
    path = str(tmp_path / "t.zarr")
    t = T.from_array(X, chunks=3, path=path)
    ref = t.chunk_ref(0)
    np.testing.assert_array_equal(load_chunk(ref), X[t.chunk_slices(0)])
    np.testing.assert_array_equal(t.read_chunk(0), X[t.chunk_slices(0)])
    T.from_array(X, chunks=3).to_zarr(path, overwrite=True)
    with pytest.raises(InputDataError, match="was replaced while in use"):
        load_chunk(ref)
    with pytest.raises(InputDataError, match="was replaced while in use"):
        t.read_chunk(0)
    with T.open_zarr(path) as t2:
        t2.close()  # nothing to release: still readable
        np.testing.assert_array_equal(t2.read_chunk(0), X[t.chunk_slices(0)])


def test_empty_slices_and_chunks_are_allowed(rng, tmp_path):
    X = _tensor(rng, (6, 5, 4))
    X[:3, :, :2] = np.nan  # chunk 0 (and slices 0-2 of mode 0 within it) empty
    X[:, 2, :] = np.nan  # slice 2 of mode 1 empty
    for layout in ("dense", "coo"):
        t = T.from_array(X, chunks=(3, 5, 2), layout=layout)
        assert t.mode_counts[1][2] == 0 and t.chunk_ptr[1] == 0
        back = T.open_zarr(t.to_zarr(str(tmp_path / f"{layout}.zarr")))
        _check_matches(back, X)
        if layout == "coo":
            index, values, shape = back.read_chunk(0)
            assert index.shape == (0, 3) and index.dtype == np.int32 and values.shape == (0,)


def test_chunks_load_on_distributed_workers(rng, tmp_path, client):
    X = _tensor(rng, (6, 5, 4))
    for layout in ("dense", "coo"):
        t = T.from_array(X, chunks=(3, 3, 2), layout=layout, path=str(tmp_path / layout))
        futures = client.map(load_chunk, [t.chunk_ref(c) for c in range(t.n_chunks)])
        for c, got in enumerate(client.gather(futures)):
            np.testing.assert_array_equal(_dense(got), X[t.chunk_slices(c)])
        np.testing.assert_array_equal(client.compute(t.to_dask()).result(), X)


@pytest.mark.parametrize("shape", [(7, 6, 5), (1, 1, 1), (9, 1, 3, 2)])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.4, 1.0])
def test_packed_dense_chunks_unpack_to_the_same_bits(rng, shape, p):
    """A dense chunk travels to a worker packed (a bit per entry and the observed values)
    and is rebuilt there bit for bit: signed zeros kept, sizes not a multiple of 8,
    empty and full chunks."""
    X = rng.standard_normal(shape)
    X.flat[:: max(1, X.size // 3)] = -0.0
    X[rng.random(shape) >= p] = np.nan
    X.flat[0] = 1.5  # one observed entry at least (an empty tensor is refused)
    t = T.from_array(X, chunks=tuple(max(1, n // 2) for n in shape), layout="dense")
    for c in range(t.n_chunks):
        packed = t.packed_chunk(c)
        sh, values = packed.shape, packed.values
        assert sh == t.read_chunk(c).shape and values.size == t.chunk_ptr[c + 1] - t.chunk_ptr[c]
        assert packed.bits.nbytes == -(-np.prod(sh) // 8)
        back = unpack_dense(pickle.loads(pickle.dumps(packed)))
        ref = t.read_chunk(c)
        assert back.dtype == np.float64 and back.flags.c_contiguous
        np.testing.assert_array_equal(np.isnan(back), np.isnan(ref))
        np.testing.assert_array_equal(back.view(np.int64)[~np.isnan(ref)],
                                      ref.view(np.int64)[~np.isnan(ref)])  # fmt: skip


def test_packed_chunk_needs_a_dense_in_memory_tensor(rng, tmp_path):
    X = _tensor(rng, (6, 5, 4))
    with pytest.raises(
        InvalidParameterError, match="packed_chunk needs an in-memory.*layout='coo'"
    ):
        T.from_array(X, layout="coo").packed_chunk(0)
    stored = T.from_array(X, layout="dense", path=str(tmp_path / "d"))
    with pytest.raises(InvalidParameterError, match="store-backed.*chunk_ref"):
        stored.packed_chunk(0)
