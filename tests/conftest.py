import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # pytest-xdist runs one worker per core (tests/run.sh): each trains on one thread, or the workers'
    # torch thread pools would oversubscribe the cores
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def workflow(tmp_path):
    """A scratch copy of the workflow in tmp_path (tests/workflows.py); .snakemake(*args) runs it there."""
    from workflows import Workflow

    return Workflow(tmp_path)


# the runs table's (architecture, layers) of report_small, as the trainer writes them for lenet5
LENET = ("lenet5", "1x32x32-6c5-p2-16c5-p2-120c5-84-10 relu")


@pytest.fixture(scope="session")
def report_full(tmp_path_factory):
    """(report.html's path, its text) of a study with every input present, two datasets (tests/report_results.py)."""
    from study_results import build, make_results

    return build(make_results(tmp_path_factory.mktemp("full") / "results", datasets=("mnist", "fashion_mnist")))


@pytest.fixture(scope="session")
def report_small(tmp_path_factory):
    """(report.html's path, its text) of a partial study: only the required inputs (and estimates.csv), no sign
    runs, no tuning, no provenance, no km.csv; its runs say LeNet-5 trained them (LENET)."""
    from study_results import build, make_results

    results = make_results(tmp_path_factory.mktemp("small") / "results", methods=("bp", "fa"), tuning=False,
                           provenance=False, network=LENET)
    (results / "analysis" / "km.csv").unlink()
    return build(results)


@pytest.fixture(scope="session")
def report_answers(tmp_path_factory):
    """{world: (report.html's path, its text)} of two studies whose factorial worlds have opposite truths
    (soap.synthetic_factorial: pure_step, where sign's advantage is its step size, and direction_better,
    where sign's direction is worth 0.03 nats), each through the analysis's study_verdict."""
    from study_results import build, make_results

    return {world: build(make_results(tmp_path_factory.mktemp(world) / "results", methods=("bp", "fa", "sign"),
                                      tuning=False, factorial=world))
            for world in ("pure_step", "direction_better")}


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST/FashionMNIST files: $SOAP_DATA_ROOT, else ../shared/data beside the repository,
    else REPO/data, downloaded there through torchvision on first use.

    Missing data is an error, not a skip: the suite always exercises real data.
    """
    if "SOAP_DATA_ROOT" in os.environ:
        root = Path(os.environ["SOAP_DATA_ROOT"])
    elif (REPO.parent / "shared" / "data" / "MNIST" / "raw").is_dir():
        root = REPO.parent / "shared" / "data"
    else:
        from soap.data import load_dataset

        root = REPO / "data"
        for name in ("mnist", "fashion_mnist"):
            load_dataset(name, root, download=True)
    if not (root / "MNIST" / "raw").is_dir():
        raise FileNotFoundError(f"real data not found at {root}; set SOAP_DATA_ROOT to the folder holding MNIST/raw")
    return root


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A throwaway PostgreSQL server on a free localhost port, for the whole session (~3 s to start).

    Not a mock: tuning's shared-study locks are PostgreSQL advisory locks. tests/run.sh installs the
    server; a missing one is an error, not a skip.
    """
    import glob
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins and not shutil.which("initdb"):
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    bin_dir = bins[-1] if bins else os.path.dirname(shutil.which("initdb"))
    # Not under pytest's base folder: it is private to this user, and the server may run as another.
    data = Path(tempfile.mkdtemp(prefix="soap-pg-"))
    run_as = []
    if os.getuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:  # a free port; the tiny race with another binder is acceptable in tests
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*run_as, f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "soap"], check=True,
                   capture_output=True)
    options = f"-k {data} -c listen_addresses=127.0.0.1 -p {port}"
    # The server inherits pg_ctl's output: send it to a log file, or waiting on a pipe never ends.
    subprocess.run([*run_as, f"{bin_dir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(data / "log"), "-w",
                    "start"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    try:
        yield f"postgresql+psycopg2://soap@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's PostgreSQL server."""
    import re

    import sqlalchemy

    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    engine = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"
