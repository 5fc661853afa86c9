"""Spark MLlib ALS baseline for the MovieLens benchmark.

Side-by-side reference for dscaledgd: explicit-feedback ALS from
``pyspark.ml.recommendation`` on a local, loopback-only Spark
(``local[threads]``, UI off, log level ERROR), tuned on a (rank, regParam)
grid against a validation split and then scored once on the test split.

    from _spark_als import als_available, fit_als_tuned
    ok, why = als_available()
    res = fit_als_tuned(train, val, test)     # each (users, items, ratings)

    python benchmarks/_spark_als.py           # self-check on MovieLens latest-small

Fairness notes
--------------
* Every held-out row is scored. ALS runs with ``coldStartStrategy="nan"`` (no
  row is dropped) and a NaN prediction -- a user or item absent from the
  training set -- is replaced by the global mean of the training ratings. The
  number of scored rows is checked against the input length.
* Predictions are not clipped to the rating scale.
* Spark's ``regParam`` is the ALS-WR ("weighted-lambda") convention: each
  user's (item's) ridge term is ``regParam * n_ratings(user)`` -- it is not the
  same λ as an unweighted ``λ/2 (||L||² + ||R||²)`` penalty.
* Spark's ALS factors are float32. Spark's BLAS/LAPACK calls use the pure-JVM
  fallbacks unless a system libblas.so.3/liblapack.so.3 is installed (the
  "netlib-blas: JNI_OnLoad ... failed" lines on stderr say so).
* A checkpoint directory (in a temp dir) is set, so ALS checkpoints its
  factor RDDs every ``checkpointInterval = 10`` iterations: without it Spark
  4.x ALS fails at ``maxIter = 15`` with a StackOverflowError while
  serialising the long lineage.
* ``numUserBlocks = numItemBlocks = spark.sql.shuffle.partitions =
  spark.default.parallelism = threads``.
* Timings use ``time.perf_counter``. Each grid point times fit + prediction on
  the validation set + RMSE. ``startup_seconds`` is the SparkSession creation
  (it includes the JVM launch only for the first session of a Python process:
  pyspark keeps the JVM after ``stop()``); ``data_seconds`` is the NumPy ->
  cached Spark DataFrame conversion of the three splits; neither is in
  ``total_seconds``. JIT warm-up is not excluded: the first grid point is
  typically the slowest.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

_LOG4J2 = """\
status = error
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
logger.pygw.name = org.apache.spark.api.python.PythonGatewayServer
logger.pygw.level = error
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _java_executable() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        cand = os.path.join(home, "bin", "java")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which("java")


def als_available() -> tuple[bool, str]:
    """(True, "") if pyspark and a Java runtime are usable, else (False, reason)."""
    try:
        import pyspark  # noqa: F401
        from pyspark.ml.recommendation import ALS  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"pyspark is not importable: {type(exc).__name__}: {exc}"
    java = _java_executable()
    if java is None:
        return False, "no Java runtime found (neither $JAVA_HOME/bin/java nor java on PATH)"
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"'{java} -version' failed: {type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        return False, f"'{java} -version' exited {proc.returncode}: {msg[:1]}"
    return True, ""


def _as_triplet(name, t):
    try:
        u, i, r = t
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple (users, items, ratings)") from None
    u = np.asarray(u).astype(np.int64, copy=False).ravel()
    i = np.asarray(i).astype(np.int64, copy=False).ravel()
    r = np.asarray(r).astype(np.float64, copy=False).ravel()
    if not (u.shape == i.shape == r.shape):
        raise ValueError(f"{name}: users, items and ratings differ in length")
    if u.size == 0:
        raise ValueError(f"{name} is empty")
    if u.min() < 0 or i.min() < 0 or max(u.max(), i.max()) > 2**31 - 1:
        raise ValueError(f"{name}: ids must lie in 0 .. 2**31-1 (Spark ALS uses int ids)")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name}: ratings contain NaN or inf")
    return u, i, r


def _start_spark(threads: int, tmpdir: str):
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is not None:
        # getOrCreate would hand back that session with its own settings (and
        # we would stop it at the end): refuse rather than measure something else.
        raise RuntimeError("a SparkSession is already active in this process; stop it first")

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    log4j = os.path.join(tmpdir, "log4j2.properties")
    with open(log4j, "w") as fh:
        fh.write(_LOG4J2)
    # JVM options only take effect when this is the process's first SparkSession
    # (pyspark keeps the JVM alive after stop()).
    jopt = f"-Dlog4j.configurationFile=file:{log4j}"
    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("dscaledgd-als-baseline")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(threads))
        .config("spark.default.parallelism", str(threads))
        .config("spark.local.dir", tmpdir)
        .config("spark.driver.memory", "2g")
        .config("spark.driver.extraJavaOptions", jopt)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    # ALS iterates on RDD lineage; without periodic checkpoints (every
    # checkpointInterval=10 iterations) task serialisation overflows the stack.
    spark.sparkContext.setCheckpointDir(os.path.join(tmpdir, "checkpoints"))
    return spark


def _to_df(spark, u, i, r, threads):
    from pyspark.sql.types import DoubleType, IntegerType, StructField, StructType

    schema = StructType(
        [
            StructField("user", IntegerType(), False),
            StructField("item", IntegerType(), False),
            StructField("rating", DoubleType(), False),
        ]
    )
    # A local list goes to the JVM pickled, without Python worker processes
    # (pandas/pyarrow are not pyspark dependencies, so no Arrow path here).
    df = spark.createDataFrame(list(zip(u.tolist(), i.tolist(), r.tolist())), schema=schema)
    if df.rdd.getNumPartitions() != threads:
        df = df.repartition(threads)
    df = df.cache()
    if df.count() != u.size:  # also materialises the cache
        raise RuntimeError("Spark DataFrame row count differs from the input arrays")
    return df


def _rmse(model, df, n_expected, n_cold, mean):
    """(RMSE over every row of ``df`` with NaN (cold-start) predictions -> ``mean``,
    RMSE over the rows whose user and item were both seen in training)."""
    from pyspark.sql import functions as F

    p = F.col("prediction")
    missing = p.isNull() | F.isnan(p)
    err = F.when(missing, F.lit(float(mean))).otherwise(p) - F.col("rating")
    row = (
        model.transform(df)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(missing.cast("long")).alias("n_missing"),
            F.sum(err * err).alias("sse"),
            F.sum(F.when(missing, F.lit(0.0)).otherwise(err * err)).alias("sse_warm"),
        )
        .collect()[0]
    )
    if int(row["n"]) != n_expected:
        raise RuntimeError(f"ALS scored {row['n']} rows, expected {n_expected}: rows were dropped")
    if int(row["n_missing"]) != n_cold:
        # more NaN predictions than unseen users/items: the fit itself broke down
        raise RuntimeError(
            f"ALS returned {row['n_missing']} NaN predictions, but only {n_cold} rows "
            "have a user or item unseen in training"
        )
    n_warm = n_expected - n_cold
    warm = math.sqrt(float(row["sse_warm"]) / n_warm) if n_warm else float("nan")
    return math.sqrt(float(row["sse"]) / n_expected), warm


def fit_als_tuned(
    train,
    val,
    test,
    *,
    ranks=(5, 10, 20, 40),
    regs=(0.01, 0.05, 0.1, 0.2),
    max_iter=15,
    seed=0,
    threads=2,
) -> dict:
    """Tune Spark ALS on (rank, regParam) by validation RMSE, refit, score on test.

    ``train``/``val``/``test`` are each ``(users, items, ratings)`` 1-D arrays
    (int64, int64, float64) in one id space (users 0..n1-1, items 0..n2-1).

    Every grid point is an ALS fit on ``train`` (explicit feedback,
    ``nonnegative=False``, ``maxIter=max_iter``, ``seed=seed``,
    ``numUserBlocks = numItemBlocks = threads``) scored by RMSE on ``val``.
    The best (rank, reg) -- lowest validation RMSE -- is refit on ``train``
    only (not train+val) and scored on ``test``.

    RMSE is over ALL rows of the scored split: ALS runs with
    ``coldStartStrategy="nan"`` and the prediction for a user or item not
    seen in ``train`` is the global mean of the training ratings. Predictions
    are not clipped. ``regParam`` is Spark's ALS-WR convention (the ridge term
    of a user/item is scaled by its number of ratings).

    Runs on one ``local[threads]`` SparkSession bound to 127.0.0.1 (UI off,
    log level ERROR), created here and stopped before returning.

    Returns a dict: ``best_rank``, ``best_reg``, ``val_rmse`` (of the best
    point), ``test_rmse``, ``grid`` (list of dicts ``rank``, ``reg``,
    ``val_rmse``, ``fit_seconds``, ``val_rmse_warm``; fit_seconds = fit + val
    prediction + RMSE), ``tune_seconds`` (wall time of the whole grid),
    ``refit_seconds`` (refit + test prediction + RMSE), ``total_seconds``
    (tune + refit; excludes Spark startup and data conversion),
    ``startup_seconds`` (SparkSession creation),
    ``data_seconds`` (NumPy -> cached DataFrames), ``spark_version``,
    ``threads``, ``max_iter``, ``train_mean``, ``cold_val``/``cold_test``
    (number of rows predicted by the global mean), and the diagnostics
    ``val_rmse_warm``/``test_rmse_warm`` (RMSE over the rows whose user and
    item both occur in ``train``; not used for tuning).

    Raises RuntimeError if pyspark or Java is unusable (see ``als_available``).
    """
    ok, why = als_available()
    if not ok:
        raise RuntimeError(f"Spark ALS baseline unavailable: {why}")
    threads = int(threads)
    if threads < 1:
        raise ValueError("threads must be >= 1")
    ranks = [int(k) for k in ranks]
    regs = [float(x) for x in regs]
    if not ranks or not regs:
        raise ValueError("ranks and regs must be non-empty")

    tr = _as_triplet("train", train)
    va = _as_triplet("val", val)
    te = _as_triplet("test", test)
    mean = float(tr[2].mean())
    seen_u = np.zeros(int(max(tr[0].max(), va[0].max(), te[0].max())) + 1, bool)
    seen_i = np.zeros(int(max(tr[1].max(), va[1].max(), te[1].max())) + 1, bool)
    seen_u[tr[0]] = True
    seen_i[tr[1]] = True

    def n_cold(t):
        return int(np.count_nonzero(~(seen_u[t[0]] & seen_i[t[1]])))

    cold_val, cold_test = n_cold(va), n_cold(te)

    import pyspark
    from pyspark.ml.recommendation import ALS

    tmpdir = tempfile.mkdtemp(prefix="dscaledgd-spark-")
    atexit.register(shutil.rmtree, tmpdir, True)  # the JVM may still write there after stop()
    spark = None
    try:
        t0 = time.perf_counter()
        spark = _start_spark(threads, tmpdir)
        startup = time.perf_counter() - t0

        t0 = time.perf_counter()
        df_tr = _to_df(spark, *tr, threads)
        df_va = _to_df(spark, *va, threads)
        df_te = _to_df(spark, *te, threads)
        data_seconds = time.perf_counter() - t0

        def make(rank, reg):
            return ALS(
                rank=rank,
                regParam=reg,
                maxIter=int(max_iter),
                seed=int(seed),
                implicitPrefs=False,
                nonnegative=False,
                coldStartStrategy="nan",
                numUserBlocks=threads,
                numItemBlocks=threads,
                userCol="user",
                itemCol="item",
                ratingCol="rating",
            )

        grid = []
        t_tune = time.perf_counter()
        for rank in ranks:
            for reg in regs:
                t0 = time.perf_counter()
                model = make(rank, reg).fit(df_tr)
                v, v_warm = _rmse(model, df_va, va[0].size, cold_val, mean)
                dt = time.perf_counter() - t0
                grid.append(
                    {
                        "rank": rank,
                        "reg": reg,
                        "val_rmse": v,
                        "fit_seconds": dt,
                        "val_rmse_warm": v_warm,
                    }
                )
        tune_seconds = time.perf_counter() - t_tune

        best = min(grid, key=lambda g: (g["val_rmse"], g["rank"], g["reg"]))
        t0 = time.perf_counter()
        model = make(best["rank"], best["reg"]).fit(df_tr)
        test_rmse, test_warm = _rmse(model, df_te, te[0].size, cold_test, mean)
        refit_seconds = time.perf_counter() - t0

        for df in (df_tr, df_va, df_te):
            df.unpersist()
        return {
            "best_rank": best["rank"],
            "best_reg": best["reg"],
            "val_rmse": best["val_rmse"],
            "test_rmse": test_rmse,
            "val_rmse_warm": best["val_rmse_warm"],
            "test_rmse_warm": test_warm,
            "grid": grid,
            "tune_seconds": tune_seconds,
            "refit_seconds": refit_seconds,
            "total_seconds": tune_seconds + refit_seconds,
            "startup_seconds": startup,
            "data_seconds": data_seconds,
            "spark_version": pyspark.__version__,
            "threads": threads,
            "max_iter": int(max_iter),
            "train_mean": mean,
            "cold_val": cold_val,
            "cold_test": cold_test,
        }
    finally:
        if spark is not None:
            spark.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------ self-check
def _load_movielens(path):
    raw = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    _, u = np.unique(raw[:, 0].astype(np.int64), return_inverse=True)
    _, i = np.unique(raw[:, 1].astype(np.int64), return_inverse=True)
    return u.astype(np.int64), i.astype(np.int64), raw[:, 2].astype(np.float64)


def _split(t, frac, rng):
    n = t[0].size
    perm = rng.permutation(n)
    k = int(round(frac * n))
    a, b = perm[:k], perm[k:]
    return tuple(x[a] for x in t), tuple(x[b] for x in t)


if __name__ == "__main__":
    import json

    path = (
        sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/movielens-latest-small/ratings.csv"
    )
    ok, why = als_available()
    if not ok:
        sys.exit(f"Spark ALS unavailable: {why}")
    data = _load_movielens(path)
    rng = np.random.default_rng(0)
    trval, test = _split(data, 0.9, rng)
    train, val = _split(trval, 0.9, rng)
    print(
        f"{data[0].size} ratings, {data[0].max() + 1} users x {data[1].max() + 1} items; "
        f"train {train[0].size}, val {val[0].size}, test {test[0].size}",
        flush=True,
    )
    res = fit_als_tuned(train, val, test)
    print(json.dumps(res, indent=1))
