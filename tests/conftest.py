"""Fixtures shared by the whole suite: databases (SQLite always, PostgreSQL when configured),
the FHIR test data (a generated Synthea-shaped export always; the real Synthea and IPS files
where they are), and scratch directories."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real Synthea and IPS example files are not part of the repository: CI keeps them in
# ../shared/data beside the checkout (or IPJMS_SHARED_DATA). Tests of compatibility with them run
# where they are and are skipped, with this reason, where they are not; IPJMS_REQUIRE_SHARED_DATA=1
# turns the skip into a failure (for CI, so a missing folder cannot pass silently).
SHARED_DATA = Path(os.environ.get("IPJMS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
PG_URL = os.environ.get("IPJMS_TEST_POSTGRES_URL")

# Byte-code for the processes the tests start (every `ipjms …` command and service imports ~190
# of the project's modules). Where PYTHONDONTWRITEBYTECODE is set (to keep __pycache__ out of the
# tree), each of those processes compiled them all from source again: ~0.3 CPU-s a start, paid
# hundreds of times a run. They write it under one cache folder outside the tree instead
# (PYTHONPYCACHEPREFIX; Python checks each file's source mtime and size, so a changed file is
# compiled again); this process and xdist's workers (started after this file is read) too.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    import tempfile

    _prefix = Path(tempfile.gettempdir()) / f"ipjms-pycache-{os.getuid()}"
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(_prefix))
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = False


def pytest_configure(config: pytest.Config) -> None:
    """The suite is a one-machine path: where libsodium is missing, its regions, services and
    in-process OPRF calls use the pure-Python ristretto255 group (trust/group_backend.py sets
    IPJMS_OPRF_ALLOW_PURE_PYTHON for this process and the ones it starts, and says so once)."""
    from trust.group_backend import allow_pure_python_on_one_machine

    allow_pure_python_on_one_machine()


def _shared_folder(name: str, what: str) -> Path:
    path = SHARED_DATA / "fhir" / name
    if path.is_dir():
        return path
    reason = (
        f"{what} not found at {path} (these files are not part of the repository; put them in "
        "../shared/data/fhir beside the checkout or set IPJMS_SHARED_DATA)"
    )
    if os.environ.get("IPJMS_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def synthea_dir() -> Path:
    """The real Synthea export (skips where it is not beside the repository)."""
    return _shared_folder("synthea", "the real Synthea export")


@pytest.fixture(scope="session")
def ips_dir() -> Path:
    """The IPS example documents (skips where they are not beside the repository)."""
    return _shared_folder("ips", "the IPS example documents")


@pytest.fixture(scope="session")
def synthea_shaped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated export in Synthea's layout (``ipjms node generate``'s files): always there."""
    from node.feeds.synthetic.synthea_shaped import synthea_shaped_export, write_export

    folder = tmp_path_factory.mktemp("synthea-shaped")
    write_export(folder, synthea_shaped_export(6, 100))
    return folder


@pytest.fixture(params=["generated", "synthea"])
def export_dir(request: pytest.FixtureRequest, synthea_shaped_dir: Path) -> Path:
    """A folder in Synthea's export layout: each test using this runs on the generated export
    (always) and on the real Synthea export (skipped, with the reason, where it is absent)."""
    if request.param == "generated":
        return synthea_shaped_dir
    return Path(request.getfixturevalue("synthea_dir"))


def _pg_admin_url() -> str:
    assert PG_URL
    return PG_URL.replace("postgresql+psycopg://", "postgresql://")


def create_pg_database() -> str:
    """Create a fresh, uniquely named PostgreSQL database and return its URL."""
    import psycopg

    name = f"ipjms_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _pg_admin_url().rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (skipped when no server is configured)."""
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL (when configured)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not PG_URL:
        pytest.skip("IPJMS_TEST_POSTGRES_URL not set")
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def store(db_url: str) -> Iterator[Any]:
    """A migrated node FHIR store on each database of ``db_url`` (the store, care and feed
    tests' common fixture)."""
    from node.store import FhirStore, migrate
    from servicekit.storage import make_engine

    engine = make_engine(db_url)
    migrate(engine)
    try:
        yield FhirStore(engine)
    finally:
        engine.dispose()


# --- One federated network for the modules that each started one ---------------------------------
# A federated network (a region of nodes with seeded patients and consents, the authority's
# SuperLink and three SuperNodes: tests/federated/fl_net.py) costs 100-150 CPU-seconds to bring
# up. These modules share one (``shared_fl_net``); each takes what it needs from it (its SuperNodes'
# policy and data folders, its own run labels), so none depends on what another left. Under xdist
# they are one unit of work (the scheduler below), so one worker builds the network once; it is
# stopped after the last of their tests.
FL_NET_MODULES = (
    "tests/federated/test_fl_e2e.py",
    "tests/federated/test_malicious_server.py",
    "tests/web/test_console_fl_run.py",
)


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


_SHARED_FL_NET = pytest.StashKey[Any]()


@pytest.fixture(scope="session")
def shared_fl_net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared federated network's holder (``fl_net.SharedFlNet``): ``.get()`` is the network,
    started on first use."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "federated"))
    from fl_net import SharedFlNet

    shared = SharedFlNet(lambda: tmp_path_factory.mktemp("shared-flnet"))
    request.config.stash[_SHARED_FL_NET] = shared
    request.addfinalizer(shared.stop)
    return shared


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Stop the shared federated network after the last of its modules' tests (in the order this
    process runs them: an xdist worker runs its tests in collection order), rather than let its
    processes idle beside the worker's other modules until the session ends."""
    yield
    shared = item.config.stash.get(_SHARED_FL_NET, None)
    if shared is None or not shared.running:
        return
    users = [i for i in item.session.items if _module_of(i.nodeid) in FL_NET_MODULES]
    if nextitem is None or not users or item is users[-1]:
        shared.stop()


# --- Parallel runs -------------------------------------------------------------------------------
# `make test` runs the suite on pytest-xdist workers with `--dist loadscope`: a test module is the
# unit of work, so tests sharing a module-scoped fixture (a started network, a PKI) stay on one
# worker and build it once. Every worker has its own tmp_path root, every PostgreSQL database is
# uniquely named and every service binds a free port, so modules running at once do not collide.

# The longest modules (serial --durations), longest first. They go out first, so none is picked
# up near the end of a run while the other workers sit idle; the rest follow in collection order.
# Only an ordering hint: a module missing here just loses its place in the queue.
HEAVIEST_FIRST = (
    # one unit of work (FL_NET_MODULES): the shared federated network, the e2e module's Flower
    # runs, the attacks, and a run started in Chromium
    "tests/federated/test_fl_e2e.py",
    "tests/federated/test_malicious_server.py",
    "tests/web/test_console_fl_run.py",
    "tests/ops/test_ops_up.py",  # the whole story on PostgreSQL, ~230 s
    "tests/node_api/test_node_demo.py",  # the whole story on SQLite (`ipjms demo`), ~210 s
    "tests/node_api/test_node_cli.py",  # node processes, ~130 s
    "tests/federated/test_training_rules.py",  # ~90 s
    "tests/exchange/test_exchange_e2e.py",  # a regional network, ~70 s
    "tests/exchange/test_exchange_faults.py",  # another one, killed and restarted, ~60 s
    "tests/coordinator_registry/test_registry_router.py",
    "tests/exchange/test_exchange_coordinator.py",
)
# Modules that each start a whole network of processes and train on it. Under four workers on two
# cores, three of them at once starved each other until argon2 sign-ins and Flower rounds timed
# out (CI, stop 25: the two stories and the federated e2e failed together). At most
# STORY_SLOTS of them run at a time; a worker that would take a third takes other work instead.
STORIES = (
    "tests/federated/test_fl_e2e.py",  # with the other FL_NET_MODULES: one unit, one network
    "tests/ops/test_ops_up.py",
    "tests/node_api/test_node_demo.py",
)
STORY_SLOTS = 2
# Within its module, this one runs first (its worker then still has the module's quick tests
# queued, so no other module waits behind the story).
FIRST_IN_MODULE = ("tests/ops/test_ops_up.py::test_up_runs_the_demo_story_on_postgresql",)


@pytest.hookimpl(trylast=True)  # after a shuffle (pytest-random-order), so it is kept within
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist only (a serial run keeps collection order): heaviest modules first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> tuple[int, int]:
        module = item.nodeid.split("::", 1)[0]
        heavy = HEAVIEST_FIRST.index(module) if module in HEAVIEST_FIRST else len(HEAVIEST_FIRST)
        return heavy, 0 if item.nodeid in FIRST_IN_MODULE else 1

    items.sort(key=rank)  # stable: otherwise tests keep their order within a module


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` with whole modules in the order above (not re-sorted by test count),
    and a worker's next module handed over only when it reaches the last test of its current one
    (an xdist worker starts a test once it knows the next). A module of one long test (the SQLite
    story) is followed by the smallest module, not the heaviest left, which waits for a free
    worker instead of queueing behind the story."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleAtATime(LoadScopeScheduling):
        def _reschedule(self, node):  # type: ignore[no-untyped-def]
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            work = self.assigned_work[node]
            pending = self._pending_of(work)
            if pending > 1:
                return
            if pending == 1 and any(len(u) == 1 and not any(u.values()) for u in work.values()):
                smallest = min(self.workqueue, key=lambda scope: len(self.workqueue[scope]))
                self.workqueue.move_to_end(smallest, last=False)
            self._keep_story_slots(node)
            self._assign_work_unit(node)

        def _keep_story_slots(self, node):  # type: ignore[no-untyped-def]
            """If the next module is a story and STORY_SLOTS stories are running on other
            workers, hand this worker the first non-story module instead (the story keeps its
            place at the head of the queue). With only stories left, the story goes anyway."""
            head = next(iter(self.workqueue))
            if head not in STORIES:
                return
            running = sum(
                1
                for other, work in self.assigned_work.items()
                if other is not node
                for scope, tests in work.items()
                if scope in STORIES and not all(tests.values())
            )
            if running < STORY_SLOTS:
                return
            other_work = next((s for s in self.workqueue if s not in STORIES), None)
            if other_work is not None:
                self.workqueue.move_to_end(other_work, last=False)

        def _split_scope(self, nodeid: str) -> str:
            """xdist's unit of work (a module, or a class within one), except that the modules
            sharing the federated network are one unit, named after the first of them (so
            STORIES and the order above apply to it)."""
            if _module_of(nodeid) in FL_NET_MODULES:
                return FL_NET_MODULES[0]
            return str(super()._split_scope(nodeid))

    config.option.loadscopereorder = False
    return ModuleAtATime(config, log)


# --- No process outlives the run ----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += _children(child)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every fixture is torn down by now, so any process still below this pytest process (or
    xdist worker) leaked from a test that failed before its cleanup: say which, and stop it
    rather than leave it running after the suite."""
    if not sys.platform.startswith("linux") or (
        session.config.getoption("numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER")
    ):
        return  # the xdist controller: its children are the workers
    leaked = [p for p in _descendants(os.getpid()) if not _zombie(p)]
    for pid in leaked:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        print(f"\nleaked process {pid} stopped: {cmd[:200]}", file=sys.stderr)
    deadline = time.monotonic() + 10
    while leaked and time.monotonic() < deadline:
        leaked = [p for p in leaked if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    for pid in leaked:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] == "Z"
    except (OSError, IndexError):
        return True
