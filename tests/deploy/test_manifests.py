"""The deploy/ recipes checked without running them: the Kubernetes manifests against the
dask-kubernetes operator's own resource definitions, compose.yaml against the compose
specification, the scripts with shellcheck, the Dockerfile with hadolint and by building
what it copies, the dask-jobqueue configuration by rendering its job script, and the
numbers the recipes must agree on (image, workers, threads, memory, ports, names)."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dask
import pytest

import dscaledgd

from ._recipes import DEPLOY, HERE, MALLOC_ENV, REPO, load_yaml, tool

K8S = DEPLOY / "kubernetes"
DOCKER = DEPLOY / "docker"
SLURM = DEPLOY / "slurm"
IMAGE = f"ghcr.io/dscaledgd/dscaledgd:{dscaledgd.__version__}"

# ----------------------------------------------------------------- Kubernetes


def _operator() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("dask-kubernetes")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dask-kubernetes is not installed (its wheel ships the operator's CRDs)")


def _crd(kind: str) -> dict:
    """The operator's CustomResourceDefinition of ``kind``, as its Helm chart installs it
    (``customresources/`` beside it holds the templates these are rendered from)."""
    path = _operator().locate_file(
        "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/"
        f"{kind.lower()}.yaml"
    )
    crd = load_yaml(Path(path))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    return crd


def _strict(schema):
    """The CRD's schema as ``kubectl apply --validate=strict`` applies it: a field that the
    schema does not name is an error (the API server would silently drop it)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validate(manifest: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``manifest`` is a valid resource of the
    operator's CRD for its kind."""
    jsonschema = pytest.importorskip("jsonschema")
    kind = manifest.get("kind")
    if kind not in ("DaskCluster", "DaskJob"):
        raise jsonschema.ValidationError(f"kind {kind!r} is not DaskCluster or DaskJob")
    crd = _crd(kind)
    version = crd["spec"]["versions"][0]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"].update(
        {
            "apiVersion": {"type": "string", "enum": [f"{crd['spec']['group']}/{version['name']}"]},
            "kind": {"type": "string", "enum": [kind]},
            "metadata": {
                "type": "object",
                "required": ["name"],
                # a DNS-1123 label that leaves room for the operator's "-scheduler" suffix
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$"}
                },
            },
        }
    )
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "spec"})
    jsonschema.Draft7Validator(schema).validate(manifest)


@pytest.fixture(scope="module")
def cluster_manifest():
    return load_yaml(K8S / "daskcluster.yaml")


@pytest.fixture(scope="module")
def job_manifest():
    return load_yaml(K8S / "daskjob.yaml")


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_manifest_is_valid_for_the_operator_crd(name):
    manifest = load_yaml(K8S / name)
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1"
    _validate(manifest)


def _break(path: str, value):
    def edit(m):
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return m

    return edit


_DELETE = object()
_BROKEN = {  # case: (file, field, new value, what the validation must say)
    "replicas as a string": (
        "daskcluster.yaml", "spec.worker.replicas", "four", "'four' is not of type 'integer'"
    ),
    "misspelled probe": (
        "daskcluster.yaml",
        "spec.scheduler.spec.containers.0.readinesProbe",
        {"tcpSocket": {"port": "tcp-comm"}},
        "'readinesProbe' was unexpected",
    ),
    "scheduler without a service": (
        "daskcluster.yaml", "spec.scheduler.service", _DELETE, "'service' is a required property"
    ),
    "container without a name": (
        "daskcluster.yaml", "spec.worker.spec.containers.0.name", _DELETE, "'name' is a required"
    ),
    "old apiVersion": (
        "daskcluster.yaml", "apiVersion", "kubernetes.dask.org/v1alpha1", "is not one of"
    ),
    "job without a cluster": (
        "daskjob.yaml", "spec.cluster", _DELETE, "'cluster' is a required property"
    ),
    "args not a list": (
        "daskjob.yaml",
        "spec.job.spec.containers.0.args",
        "dscaledgd complete",
        "is not of type 'array'",
    ),
    "name too long for the service": ("daskjob.yaml", "metadata.name", "x" * 60, "does not match"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_broken_manifest_fails_validation(case):
    """The validation can fail: each of these edits makes a manifest invalid, for the
    reason given."""
    jsonschema = pytest.importorskip("jsonschema")
    name, path, value, reason = _BROKEN[case]
    manifest = _break(path, value)(copy.deepcopy(load_yaml(K8S / name)))
    with pytest.raises(jsonschema.ValidationError, match=re.escape(reason)):
        _validate(manifest)


def _containers(manifest: dict):
    spec = manifest["spec"]
    if manifest["kind"] == "DaskJob":
        yield "job", spec["job"]["spec"]["containers"][0]
        spec = spec["cluster"]["spec"]
    yield "scheduler", spec["scheduler"]["spec"]["containers"][0]
    yield "worker", spec["worker"]["spec"]["containers"][0]


def _flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


def _bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|)", q)
    assert m, q
    return int(m[1]) * _QUANTITY[m[2]]


@pytest.mark.parametrize("name", ["daskcluster.yaml", "daskjob.yaml"])
def test_manifest_numbers_agree(name):
    """What the operator cannot check: the pinned image, the commands (``dask scheduler`` /
    ``dask worker``, no hyphenated ones), threads = CPUs, the worker's memory limit under
    the container's, probes and service on named ports that exist, the service selecting
    this cluster, the malloc settings, and the shared claim."""
    manifest = load_yaml(K8S / name)
    containers = dict(_containers(manifest))
    cluster_spec = (
        manifest["spec"] if name == "daskcluster.yaml" else manifest["spec"]["cluster"]["spec"]
    )
    for role, c in containers.items():
        assert c["image"] == IMAGE, (role, c["image"])
        assert c["args"][0] in ("dask", "dscaledgd"), c["args"]
    assert containers["scheduler"]["args"][:2] == ["dask", "scheduler"]
    assert containers["worker"]["args"][:2] == ["dask", "worker"]

    worker = containers["worker"]
    res = worker["resources"]
    assert _flag(worker["args"], "--nthreads") == res["requests"]["cpu"] == res["limits"]["cpu"]
    limit = _bytes(res["limits"]["memory"])
    dask_limit = dask.utils.parse_bytes(_flag(worker["args"], "--memory-limit"))
    assert 0.75 * limit <= dask_limit < limit
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert MALLOC_ENV.items() <= env.items() and env["OPENBLAS_NUM_THREADS"] == "1"

    scheduler = containers["scheduler"]
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    assert _flag(scheduler["args"], "--port") == "8786"
    assert _flag(scheduler["args"], "--dashboard-address").endswith(":8787")
    ready, alive = scheduler["readinessProbe"], scheduler["livenessProbe"]
    assert ready["httpGet"]["path"] == "/health" and ready["httpGet"]["port"] in ports
    assert alive["tcpSocket"]["port"] in ports
    service = cluster_spec["scheduler"]["service"]
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    assert {p["port"] for p in service["ports"]} == {8786, 8787}  # the operator's address uses 8786
    assert service["selector"]["dask.org/cluster-name"] == manifest["metadata"]["name"]
    assert service["selector"]["dask.org/component"] == "scheduler"

    claim = load_yaml(K8S / "pvc.yaml")
    assert (
        claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    )
    pod_specs = [cluster_spec["worker"]["spec"]]
    if name == "daskjob.yaml":
        pod_specs.append(manifest["spec"]["job"]["spec"])
    for pod in pod_specs:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"data": claim["metadata"]["name"]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["data"] == "/data"

    if name == "daskjob.yaml":
        job = containers["job"]
        assert manifest["spec"]["job"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        assert job["args"][:2] == ["dscaledgd", "complete"]
        assert "--scheduler" not in job["args"]  # the operator's DASK_SCHEDULER_ADDRESS
        assert int(_flag(job["args"], "--wait-for-workers")) == cluster_spec["worker"]["replicas"]
        assert _flag(job["args"], "--out").startswith("/data/")


def test_daskjob_cluster_is_the_daskcluster(cluster_manifest, job_manifest):
    """The DaskJob brings the same cluster as daskcluster.yaml (only its name differs)."""
    own = copy.deepcopy(job_manifest["spec"]["cluster"]["spec"])
    own["scheduler"]["service"]["selector"]["dask.org/cluster-name"] = "dscaledgd"
    assert own == cluster_manifest["spec"]


def _keys(tree, prefix=""):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from _keys(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def test_helm_values_fit_the_operator_chart():
    """Every value set exists in the operator chart's values.yaml, and the operator is pinned
    to the release whose CRDs the manifests are validated against."""
    dist = _operator()
    chart = load_yaml(
        Path(
            dist.locate_file(
                "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/values.yaml"
            )
        )
    )
    ours = load_yaml(K8S / "helm-values.yaml")
    known = set(_keys(chart))
    for key in _keys(ours):
        assert key in known or any(key.startswith(k + ".") for k in known if k), key
    assert ours["image"]["tag"] == dist.version
    assert f"--version {dist.version}" in (K8S / "helm-values.yaml").read_text()


# ------------------------------------------------------------------ compose


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    exe = tool("check-jsonschema")
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_for_the_compose_spec():
    r = _check_compose(DOCKER / "compose.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("services.worker.comand", ["dask", "worker"], "'comand' was unexpected"),
        ("services.worker.depends_on.scheduler.condition", "service_healty", "'service_healty'"),
        ("services.job.profiles", "job", "'job' is not of type 'array'"),
    ],
    ids=["misspelled key", "bad condition", "profiles not a list"],
)
def test_broken_compose_file_fails_validation(tmp_path, field, value, reason):
    import yaml

    doc = load_yaml(DOCKER / "compose.yaml")
    _break(field, value)(doc)
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(doc))
    r = _check_compose(broken)
    assert r.returncode != 0 and reason in r.stdout, r.stdout


def test_compose_services_agree():
    doc = load_yaml(DOCKER / "compose.yaml")
    services = doc["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    for name, s in services.items():
        assert s["image"] == IMAGE, name
        assert s["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (
            DOCKER / s["build"]["context"] / s["build"]["dockerfile"]
        ).resolve() == DOCKER / "Dockerfile"
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert services["job"]["profiles"] == ["job"]
    job = services["job"]["command"]
    assert (
        job[:2] == ["dscaledgd", "complete"] and _flag(job, "--scheduler") == "tcp://scheduler:8786"
    )
    # the job waits for as many workers as compose starts
    assert _flag(job, "--wait-for-workers") == str(services["worker"]["deploy"]["replicas"])
    worker = services["worker"]
    assert MALLOC_ENV.items() <= worker["environment"].items()
    limit = dask.utils.parse_bytes(worker["deploy"]["resources"]["limits"]["memory"].upper() + "iB")
    assert dask.utils.parse_bytes(_flag(worker["command"], "--memory-limit")) < limit
    assert _flag(worker["command"], "--nthreads") == worker["deploy"]["resources"]["limits"]["cpus"]


# ----------------------------------------------------------------- shellcheck


SCRIPTS = [
    SLURM / "dscaledgd.sbatch",
    HERE / "bin" / "srun",
    HERE / "one_node_slurm.sh",
    REPO / ".ci" / "run",
]


def lint(name: str, path) -> subprocess.CompletedProcess:
    """Run the linter ``name`` (shellcheck, hadolint) on ``path``."""
    return subprocess.run([tool(name), str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    r = lint("shellcheck", script)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_finds_a_known_bug(tmp_path):
    """The linter really runs: an unquoted variable in ``rm`` is reported."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $1/data\n")
    r = lint("shellcheck", bad)
    assert r.returncode != 0 and "SC2086" in r.stdout


def _to_seconds(walltime: str) -> subprocess.CompletedProcess:
    """The sbatch script's own ``to_seconds``, extracted and run by bash."""
    text = (SLURM / "dscaledgd.sbatch").read_text()
    body = re.search(r"^to_seconds\(\) \{.*?^\}$", text, re.S | re.M)
    assert body, "to_seconds() not found in dscaledgd.sbatch"
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail\n{body[0]}\nto_seconds "$1"', "sh", walltime],
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize(
    "walltime, seconds",
    [
        ("5", 300),
        ("4:58", 298),
        ("08:09", 489),  # leading zeros are decimal, not octal
        ("1:00:00", 3600),
        ("02:00:00", 7200),
        ("1-00:00:00", 86400),
        ("2-3", 2 * 86400 + 3 * 3600),
        ("2-03:04", 2 * 86400 + 3 * 3600 + 4 * 60),
        ("1-02:03:09", 86400 + 2 * 3600 + 3 * 60 + 9),
    ],
)
def test_sbatch_reads_slurm_time_formats(walltime, seconds):
    r = _to_seconds(walltime)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == seconds


@pytest.mark.parametrize("walltime", ["UNLIMITED", "INVALID", "NOT_SET", ""])
def test_sbatch_gives_no_lifetime_without_a_time_limit(walltime):
    assert _to_seconds(walltime).returncode != 0


# ------------------------------------------------------------------- Docker


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_hadolint_passes():
    r = lint("hadolint", DOCKER / "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_finds_a_known_bug(tmp_path):
    """The linter really runs: an image without a tag (``:latest``) is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ghcr.io/dask/dask:latest\nRUN pip install zarr\n")
    r = lint("hadolint", bad)
    assert r.returncode != 0 and "DL3007" in r.stdout


def test_dockerfile_base_is_the_tested_dask_and_python():
    """FROM resolves to the official Dask image of the installed dask and this Python, and
    dscaledgd is installed into it from source (not EXTRA_PIP_PACKAGES at start-up)."""
    text = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    (image,) = re.findall(r"^FROM (\S+)", text, re.M)
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert image == f"ghcr.io/dask/dask:{dask.__version__}-py{python}"
    assert "EXTRA_PIP_PACKAGES" not in text
    assert re.search(r"^RUN pip install --no-cache-dir \. ", text, re.M)
    for key, value in MALLOC_ENV.items():
        assert re.search(rf"\b{key}={value}\b", text)


def test_dockerfile_copies_enough_to_build_the_package(tmp_path):
    """What the Dockerfile COPYs (and its .dockerignore lets through) builds the wheel that
    ``pip install .`` installs, with the ``dscaledgd`` command."""
    setuptools = pytest.importorskip("setuptools")
    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build this pyproject.toml")
    text = _dockerfile()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore  # the context is the repository: only what is let through is sent
    context = tmp_path / "context"
    context.mkdir()
    for sources, _dest in re.findall(r"^COPY (.+) (\S+)$", text, re.M):
        for src in sources.split():
            assert f"!{src}" in ignore, f"{src} is copied but .dockerignore leaves it out"
            path = REPO / src
            if path.is_dir():
                shutil.copytree(path, context / src, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, context / src)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("dscaledgd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"dscaledgd/__init__.py", "dscaledgd/cli.py"} <= names
        (ep,) = [n for n in names if n.endswith("entry_points.txt")]
        assert "dscaledgd = dscaledgd.cli:main" in z.read(ep).decode()


# ------------------------------------------------------------- dask-jobqueue


def _jobqueue_config() -> dict:
    pytest.importorskip("dask_jobqueue")
    loaded = load_yaml(SLURM / "jobqueue.yaml")
    return dask.config.merge(dask.config.get("jobqueue"), loaded["jobqueue"])


def _seconds(text: str) -> float:
    return dask.utils.parse_timedelta(text)


def test_jobqueue_config_renders_the_job_script():
    """Loaded into dask's config, the file gives SLURMCluster a job script that exports the
    malloc settings, starts ``python -m distributed.cli.dask_worker`` (which this
    distributed still has) with the walltime-derived lifetime, and asks SLURM for what the
    worker is told it has."""
    from dask_jobqueue import SLURMCluster

    config = _jobqueue_config()
    with (
        dask.config.set({"jobqueue": config}),
        SLURMCluster(
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
        ) as cluster,
    ):
        script = cluster.job_script()
    slurm = config["slurm"]
    for key, value in MALLOC_ENV.items():
        assert f"export {key}={value}" in script
    assert "OPENBLAS_NUM_THREADS=1" in script
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert importlib.util.find_spec("distributed.cli.dask_worker") is not None
    assert f"#SBATCH --cpus-per-task={slurm['cores']}" in script
    assert f"#SBATCH -t {slurm['walltime']}" in script
    assert f"--nthreads {slurm['cores']} " in script
    per_worker = dask.utils.parse_bytes(slurm["memory"]) / slurm["processes"]
    limit = dask.utils.parse_bytes(re.search(r"--memory-limit (\S+)", script)[1])
    assert abs(limit - per_worker) < 0.01 * per_worker
    (mem,) = re.findall(r"^#SBATCH --mem=(\d+)G$", script, re.M)  # SLURM's G is GiB
    assert int(mem) * 2**30 >= limit
    assert "--local-directory $TMPDIR" in script
    worker_args = " ".join(slurm["worker-extra-args"])
    assert worker_args in script
    lifetime = _seconds(_flag(slurm["worker-extra-args"], "--lifetime"))
    stagger = _seconds(_flag(slurm["worker-extra-args"], "--lifetime-stagger"))
    h, m, s = (int(x) for x in slurm["walltime"].split(":"))
    assert 0 < lifetime - stagger and lifetime + stagger < h * 3600 + m * 60 + s
