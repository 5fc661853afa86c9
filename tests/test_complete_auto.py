"""complete(rank="auto", reg="auto"): choices, determinism, concurrency, bad inputs, CLI."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dscaledgd as dsg
from dscaledgd import InvalidParameterError, cli
from dscaledgd.api import selection

pytestmark = pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.DataWarning")


def ratings(seed=0, shape=(200, 300), nnz=6000, noise=0.5):
    """Ratings-like data: rank 3 around 3, popular columns, noise 0.5 (reg matters)."""
    rng = np.random.default_rng(seed)
    pop = rng.pareto(1.5, shape[1]) + 0.1
    cols = rng.choice(shape[1], size=3 * nnz, p=pop / pop.sum())
    rows = rng.integers(0, shape[0], size=3 * nnz)
    key = rng.permutation(np.unique(rows * shape[1] + cols))[:nnz]
    r, c = key // shape[1], key % shape[1]
    truth = rng.standard_normal((shape[0], 3)) @ rng.standard_normal((3, shape[1])) / np.sqrt(3)
    v = 3 + truth[r, c] + noise * rng.standard_normal(len(r))
    return dsg.Observations.from_coo(r, c, v, shape=shape, tiles=(2, 2))


@pytest.fixture(scope="module")
def planted():
    """Rank 10 (not an end of the grid 5, 10, 20, 40), noise 0.3 of the RMS entry."""
    obs, _ = dsg.datasets.make_completion((300, 200), 10, 0.3, noise=0.3, random_state=0)
    return obs


@pytest.fixture(scope="module")
def searched():
    """``(obs, res)``: rank and reg chosen among 16 candidates on ratings-like data."""
    obs = ratings(1)
    return obs, auto(obs, reg="auto", center="biases", patience=5)


def auto(obs, **kw):
    kw = {"scheduler": "threads", "random_state": 0, "progress": False, **kw}
    return dsg.complete(obs, kw.pop("rank", "auto"), **kw)


def same_run(a, b):
    """Bit for bit: the same iterates, history and factors."""
    assert a.status == b.status and a.n_iter == b.n_iter
    for key in ("loss", "validation"):
        np.testing.assert_array_equal(a.history[key], b.history[key])
    for Fa, Fb in zip(a.factors, b.factors):
        np.testing.assert_array_equal(np.asarray(Fa), np.asarray(Fb))


def test_auto_rank_finds_the_planted_rank(planted):
    res = auto(planted)
    ms = res.info["model_selection"]
    assert res.params["rank"] == 10 and res.params["auto"] == ["rank"] and res.L.shape == (300, 10)
    assert ms["chosen"] == {"rank": 10} and ms["grid"]["rank"] == [5, 10, 20, 40]
    best = {row["rank"]: row["best_val_rmse"] for row in ms["table"]}
    assert best[10] < min(best[5], best[20], best[40])
    # the held-out set: 10% of the observations, split with random_state + 1
    assert ms["validation"] == {
        "source": "split", "fraction": 0.1, "random_state": 1,
        "nnz": round(0.1 * planted.nnz), "train_nnz": planted.nnz - round(0.1 * planted.nnz),
    }  # fmt: skip
    # the result is the winner's fit: complete with the chosen values on that split
    fit, val = planted.split(0.1, random_state=1)
    one = dsg.complete(fit, 10, validation=val, scheduler="threads", random_state=0)
    same_run(res, one)
    assert res.params["max_iter"] == 500 and "checkpoint" not in res.info


def test_auto_reg_picks_the_grid_best_of_a_brute_force_search():
    obs = ratings(0)
    fit, val = obs.split(0.1, random_state=1)
    kw = {"center": "biases", "validation": val, "scheduler": "threads", "random_state": 0}
    brute = {reg: dsg.complete(fit, 5, reg=reg, **kw) for reg in selection.REG_GRID}
    scores = {reg: float(np.min(r.history["validation"])) for reg, r in brute.items()}
    res = dsg.complete(fit, 5, reg="auto", progress=False, **kw)
    chosen = res.params["reg"]
    assert chosen == min(scores, key=scores.get) == 0.1  # inside the grid, not at an end
    same_run(res, brute[chosen])
    table = res.info["model_selection"]["table"]
    assert [row["reg"] for row in table] == list(selection.REG_GRID)
    for row in table:  # each candidate's trajectory is its single run's, cut at its budgets
        curve = brute[row["reg"]].history["validation"]
        assert row["val_rmse"] == [float(np.min(curve[: b + 1])) for b in row["budgets"]]
    assert res.info["model_selection"]["validation"]["source"] == "validation"


def test_halving_drops_candidates_and_budgets_double(searched):
    _, res = searched
    ms = res.info["model_selection"]
    table = ms["table"]
    assert len(table) == 16 and ms["auto"] == ["rank", "reg"]
    assert ms["budgets"][:4] == [10, 20, 40, 80] and ms["budgets"][-1] == 500
    dropped = [row["dropped_after_round"] for row in table]
    assert [dropped.count(k) for k in (1, 2, 3, 4, None)] == [8, 4, 2, 1, 1]
    (win,) = [row for row in table if row["chosen"]]
    assert win["dropped_after_round"] is None
    assert (win["rank"], win["reg"]) == (res.params["rank"], res.params["reg"])
    assert win["best_val_rmse"] == min(row["best_val_rmse"] for row in table)
    for row in table:  # a dropped candidate ran at most the rounds before its drop
        assert row["budgets"] == ms["budgets"][: row["rounds"]]
        assert row["dropped_after_round"] is None or row["rounds"] <= row["dropped_after_round"]
    # fewer iterations than fitting every candidate to its own stop
    assert sum(row["n_iter"] for row in table) < 16 * win["n_iter"]


def test_same_answer_whatever_the_concurrency(searched, planted, monkeypatch):
    obs, ref = searched
    assert ref.info["model_selection"]["n_jobs"] == 2  # this machine's default: 2 threads
    for n_jobs in (1, 5):
        monkeypatch.setattr(selection, "CONCURRENT_FITS", n_jobs)
        other = auto(obs, reg="auto", center="biases", patience=5)
        assert other.info["model_selection"]["max_concurrent"] <= n_jobs
        assert other.info["model_selection"]["table"] == ref.info["model_selection"]["table"]
        same_run(other, ref)
    # a Generator seed: one draw for the fits and one for the split, recorded
    g = auto(planted, random_state=np.random.default_rng(7))
    assert g.info["model_selection"]["validation"]["random_state"] > 1


def test_candidates_run_concurrently_on_one_executor(planted, monkeypatch):
    """Each first-round fit waits at a barrier for another one: run one after another,
    the first would break the barrier (BrokenBarrierError after 60 s)."""
    barrier = threading.Barrier(2, timeout=60)
    first_fit = selection.fit_on
    executors = set()

    def fit_on(engine, *args, **kw):
        executors.add(id(engine.ex))
        barrier.wait()
        return first_fit(engine, *args, **kw)

    monkeypatch.setattr(selection, "CONCURRENT_FITS", 2)
    monkeypatch.setattr(selection, "fit_on", fit_on)
    res = auto(planted)
    assert res.info["model_selection"]["max_concurrent"] == 2
    assert len(executors) == 1  # every candidate on the one executor resolved up front
    assert res.params["rank"] == 10


def test_auto_on_a_distributed_client_gives_the_threads_answer(client):
    """Up to the rounding of another process (tests/test_determinism.py: 1e-12)."""
    obs, _ = dsg.datasets.make_completion((120, 90), 5, 0.4, noise=0.2, random_state=2)
    fit, val = obs.split(0.1, random_state=3)
    on_client = dsg.complete(fit, "auto", validation=val, client=client, random_state=0)
    threads = dsg.complete(fit, "auto", validation=val, scheduler="threads", random_state=0)
    assert on_client.info["executor"] == "distributed"
    assert on_client.params["rank"] == threads.params["rank"] == 5
    assert on_client.n_iter == threads.n_iter
    for a, b in zip(on_client.info["model_selection"]["table"],
                    threads.info["model_selection"]["table"]):  # fmt: skip
        assert a["budgets"] == b["budgets"] and a["dropped_after_round"] == b["dropped_after_round"]
        np.testing.assert_allclose(a["val_rmse"], b["val_rmse"], rtol=1e-12)
    np.testing.assert_allclose(on_client.history["loss"], threads.history["loss"], rtol=1e-12)
    with client.as_current():
        np.testing.assert_allclose(on_client.L.compute(), np.asarray(threads.L), atol=1e-12)


def test_the_estimator_and_the_oracle_take_auto(searched, planted):
    obs, res = searched
    est = dsg.MatrixCompletion(rank="auto", reg="auto", center="biases", patience=5,
                               scheduler="threads", random_state=0).fit(obs)  # fmt: skip
    assert est.get_params()["rank"] == "auto"  # the parameter is kept; the choice is fitted
    assert est.result_.params["rank"] == est.L_.shape[1] == res.params["rank"]
    assert est.result_.info["model_selection"]["table"] == res.info["model_selection"]["table"]
    assert set(est.result_.params["auto"]) == {"rank", "reg"}
    ref = dsg.api.complete_oracle(planted, "auto", random_state=0)
    assert ref.params["rank"] == 10 and ref.info["executor"] == "sync"


def test_auto_survives_a_result_store_round_trip(planted, tmp_path):
    res = auto(planted)
    back = dsg.load_result(res.to_zarr(tmp_path / "res.zarr"))
    assert back.info["model_selection"]["chosen"] == {"rank": 10}
    assert back.info["model_selection"]["table"][1]["budgets"] == [10, 20, 500]


def test_the_winners_convergence_warning_is_given_once(planted):
    """Every candidate stops at each round's budget (status max_iter); only the winner's
    final stop is the user's business."""
    with pytest.warns(dsg.ConvergenceWarning) as rec:
        res = auto(planted, max_iter=15)
    assert res.status == "max_iter" and res.info["model_selection"]["budgets"] == [10, 15]
    assert len([w for w in rec if issubclass(w.category, dsg.ConvergenceWarning)]) == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"rank": "Auto"}, r"'rank' parameter of complete must be an int in \[1, 200\]"),
        ({"reg": "best"}, r"'reg' parameter of complete must be a float in \[0, inf\)"),
        (
            {"init": (np.zeros((300, 5)), np.zeros((200, 5)))},
            "'init' parameter of complete is a tuple of factors, which fixes the rank, but "
            "rank='auto'",
        ),
        ({"callback": print}, r"'callback' parameter of complete must be None with rank='auto'"),
        (
            {"reg": "auto", "checkpoint": "ck"},
            r"'checkpoint' parameter of complete must be None with rank='auto' and reg='auto'",
        ),
    ],
)
def test_bad_auto_inputs(planted, kw, match):
    kw = {"rank": "auto", **kw}
    with pytest.raises(InvalidParameterError, match=match):
        dsg.complete(planted, kw.pop("rank"), scheduler="sync", **kw)


def test_auto_is_refused_where_it_is_not_supported():
    Y = np.random.default_rng(0).standard_normal((30, 20))
    msg = "Got 'auto': choosing rank by validation error (rank='auto') is supported by complete"
    with pytest.raises(InvalidParameterError, match=r"'rank' parameter of rpca .*" + msg[:20]):
        dsg.rpca(Y, "auto", scheduler="sync")
    with pytest.raises(InvalidParameterError, match=r"'rank' parameter of rpca") as exc:
        dsg.RobustPCA(rank="auto", scheduler="sync").fit(Y)
    assert msg in str(exc.value)
    with pytest.raises(InvalidParameterError, match="'ranks' parameter of tucker_complete"):
        dsg.tucker_complete(np.ones((6, 5, 4)), "auto", scheduler="sync")
    tiny = dsg.Observations.from_coo([0, 1, 2], [1, 2, 0], [1.0, 2.0, 3.0], shape=(3, 3))
    with pytest.raises(InvalidParameterError, match="leaves none to score on. Pass validation="):
        dsg.complete(tiny, "auto", scheduler="sync")


def test_rank_grid_is_clipped_to_valid_ranks():
    assert selection.rank_grid((300, 200)) == (5, 10, 20, 40)
    assert selection.rank_grid((30, 25)) == (5, 10, 20)
    assert selection.rank_grid((4, 9)) == (1, 2, 3)
    assert selection.rank_grid((1, 9)) == ()
    one_row = dsg.Observations.from_coo([0, 0], [0, 1], [1.0, 2.0], shape=(1, 9))
    with pytest.raises(InvalidParameterError, match="admit no rank"):
        dsg.complete(one_row, "auto", scheduler="sync")


def test_cli_complete_rank_auto_reg_auto(searched, tmp_path, capsys):
    obs, py = searched
    p = obs.to_zarr(tmp_path / "obs.zarr")
    out = tmp_path / "res.zarr"
    argv = ["complete", p, "--rank", "auto", "--reg", "auto", "--center", "biases",
            "--patience", "5", "--out", out, "--scheduler", "threads"]  # fmt: skip
    assert cli.main(list(map(str, argv))) == 0
    printed = capsys.readouterr().out
    res = dsg.load_result(str(out))
    chosen = res.info["model_selection"]["chosen"]
    assert f"chosen by validation RMSE: rank {chosen['rank']}, reg {chosen['reg']}" in printed
    # the same as the Python call (the CLI's seed defaults to 0)
    assert py.info["model_selection"]["table"] == res.info["model_selection"]["table"]
    with pytest.raises(SystemExit) as exc:  # a usage error
        cli.main(["complete", str(p), "--rank", "ten", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--rank: expected an integer or 'auto'; got 'ten'" in capsys.readouterr().err
    bad = ["complete", str(p), "--rank", "auto", "--out", str(tmp_path / "y"), "--checkpoint",
           str(tmp_path / "ck")]  # fmt: skip
    assert cli.main(bad) == 1
    assert "must be None with --rank auto" in capsys.readouterr().err
