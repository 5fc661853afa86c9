"""TLS end to end, and two clients on one cluster at once (issue 15, "Faults").

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1, stopped by PID. The
TLS certificates are made here with the ``openssl`` command (skipped where it is
missing): a CA and one certificate for 127.0.0.1 used by the scheduler, the workers
and the client, as deploy/*/README.md describes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import dask
import numpy as np
import pytest

import dscaledgd as dsg

from ._procs import BIN, free_port

pytestmark = pytest.mark.timeout(240)


def _certs(d):
    """``(ca, cert, key)`` paths: a throwaway CA and a certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make TLS certificates")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=dscaledgd-test-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    with open(os.path.join(d, "ext.cnf"), "w") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return (os.path.join(d, f) for f in ("ca.pem", "node.pem", "node.key"))


def _spawn(*args):
    return subprocess.Popen([os.path.join(BIN, "dask"), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_fit_over_tls(tmp_path):
    ca, cert, key = _certs(str(tmp_path))
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    tls = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
    procs = [_spawn("scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", "tls",
                    "--no-dashboard", *tls)]  # fmt: skip
    procs += [_spawn("worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                     "--no-dashboard", *tls) for _ in range(2)]  # fmt: skip
    obs, truth = dsg.datasets.make_completion((150, 120), 2, 0.4, random_state=0)
    settings = {
        "distributed.comm.tls.ca-file": ca,
        "distributed.comm.tls.client.cert": cert,
        "distributed.comm.tls.client.key": key,
        "distributed.comm.require-encryption": True,
        "dscaledgd.wait-for-workers": 2,
    }
    try:
        with dask.config.set(settings):
            res = dsg.complete(obs, 2, address=address, random_state=0)
        assert res.converged and res.info["scheduler_address"] == address
        assert truth.relative_error(*res.compute_factors()) < 1e-8
        # without the client's certificate the scheduler refuses the connection
        with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
            with pytest.raises((ConnectionError, OSError)):
                dsg.complete(obs, 2, address=address.replace("tls://", "tcp://"))
    finally:
        _stop(procs)


@pytest.mark.filterwarnings("ignore::dscaledgd.exceptions.ConvergenceWarning")
def test_two_clients_on_one_cluster_at_once_get_their_own_answers(tmp_path):
    """Two runs share a cluster and a store at the same time, each writing checkpoints: no
    key collisions, each gets the answer it gets alone, and each resumes from its own
    checkpoints to that answer."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_spawn("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")]
    procs += [_spawn("worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                     "--no-dashboard") for _ in range(2)]  # fmt: skip
    obs, _ = dsg.datasets.make_completion((200, 150), 3, 0.3, cond=10, random_state=0)
    path = obs.to_zarr(tmp_path / "obs.zarr")
    store = dsg.Observations.open_zarr(path)
    kw = [dict(rank=3, random_state=0), dict(rank=2, random_state=1, method="gd", max_iter=60)]
    try:
        with dask.config.set({"dscaledgd.wait-for-workers": 2}):
            alone = [dsg.complete(store, address=address, **k) for k in kw]
            both: list = [None, None]

            ck = [str(tmp_path / f"ck{i}") for i in range(2)]

            def run(i):
                both[i] = dsg.complete(
                    store, address=address, checkpoint=ck[i], checkpoint_interval=5, **kw[i]
                )

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=180)
            assert time.monotonic() - t0 < 180
            again = [
                dsg.complete(store, address=address, checkpoint=ck[i], resume=True, **kw[i])
                for i in range(2)
            ]
        for a, b, c in zip(alone, both, again):
            assert b is not None and (a.status, a.n_iter) == (b.status, b.n_iter)
            assert c.info["resumed_from"] is not None and (c.status, c.n_iter) == (
                a.status,
                a.n_iter,
            )
            for fa, fb, fc in zip(a.compute_factors(), b.compute_factors(), c.compute_factors()):
                np.testing.assert_allclose(fb, fa, rtol=1e-10, atol=1e-12)
                np.testing.assert_allclose(fc, fa, rtol=1e-10, atol=1e-12)
    finally:
        _stop(procs)
