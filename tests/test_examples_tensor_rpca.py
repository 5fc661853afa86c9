"""The tensor RPCA examples run end to end on the real data (issue 17), in quick mode."""

from __future__ import annotations

import numpy as np
import pytest

from .test_examples import DEMO_CLIP, MNI152, SAMSON, _is_png, _load_example, _need


@pytest.mark.data
def test_video_tensor_rpca_quick(tmp_path):
    """The 51-frame 48x48 demo clip: tensor RPCA (ranks 2,24,24) against the matrix RPCA.

    Measured: foreground 5.4% (tensor) and 4.2% (matrix) of the pixels, F1 0.84.
    """
    _need(DEMO_CLIP, "the LRSLibrary demo clip")
    video = _load_example("video_tensor_rpca")
    out = video.main(["--quick", "--no-tensorly", "--out", str(tmp_path)])
    assert out["ranks"] == (2, 24, 24)
    L, S = out["rows"]["tensor RPCA"]
    np.testing.assert_allclose(L + S, out["X"], atol=0.02)  # S = thre(Y − L, ζ): off by ζ
    assert 0.02 < out["masks"]["tensor RPCA"].mean() < 0.1
    assert out["f1"] > 0.75
    assert _is_png(out["png"])


@pytest.mark.data
@pytest.mark.parametrize("dataset", ["hsi", "brain"])
def test_denoise_tensor_rpca_quick(tmp_path, dataset):
    """10% salt and pepper. Measured (quick): Samson 48x48x78 noisy 14.1 dB, plain Tucker
    26.2, tensor RPCA 31.0; MNI152 at every 4th voxel 13.2 / 20.3 / 26.1."""
    if dataset == "brain":
        pytest.importorskip("nibabel", reason="the brain volume needs nibabel (neuro extra)")
    _need(SAMSON if dataset == "hsi" else MNI152, dataset)
    ex = _load_example("denoise_tensor_rpca")
    out = ex.main(["--dataset", dataset, "--quick", "--out", str(tmp_path)])
    p = out["psnr"]
    assert p["tensor RPCA"] > p["plain Tucker"] + 3 > p["noisy"] + 3
    assert out["caught"] > 0.5 and out["false"] < 0.1
    assert _is_png(out["png"])


@pytest.mark.data
def test_movielens_bpr_quick(tmp_path):
    """Item-item BPR triplets from ml-latest-small, one epoch of ScaledSGD and SGD (issue 18)."""
    from .test_examples import DATA_DIR as DATA

    _need(f"{DATA}/movielens-latest-small/ratings.csv", "MovieLens ratings")
    ex = _load_example("movielens_bpr")
    out = ex.main(["--quick", "--out", str(tmp_path)])
    assert out["items"] > 1000 and 0.6 < out["np_maximum"] < 0.8
    for method in ("scaledsgd", "sgd"):
        c = out["curves"][method]
        assert len(c["auc"]) == 201 and c["auc"][-1] > c["auc"][0] + 0.1
    if out["png"] is not None:
        assert _is_png(out["png"])
