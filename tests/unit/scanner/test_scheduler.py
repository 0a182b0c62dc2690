"""The server's scan scheduler (fake registry lister, injected clock), credentials
references, and a worker's lease extension and give-back on stop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from moray.controlplane.scanner.engine.model import ScanResult
from moray.controlplane.scanner.errors import RegistryError, ScanError
from moray.controlplane.scanner.service.credentials import check_reference, resolve
from moray.controlplane.scanner.service.scheduler import (
    Scheduler,
    check_image,
    check_policy,
    check_registry,
)
from moray.controlplane.scanner.service.worker import run_worker
from moray.controlplane.store.scanstore import ScanJob, ScanStore

POLICY = "kind: ImageAssurancePolicy\nmetadata: {name: p}\nspec: {notRoot: true}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRegistry:
    def __init__(self, images: dict[str, list[str]]) -> None:
        self.images = images
        self.calls: list[tuple[str, bool, str | None, list[str] | None]] = []
        self.fail = False

    def __call__(self, registry: str, *, insecure: bool = False, username: str | None = None,
                 password: str | None = None,
                 repositories: list[str] | None = None) -> list[str]:
        self.calls.append((registry, insecure, username, repositories))
        if self.fail:
            raise RegistryError("cannot reach registry", source=registry)
        return [f"{registry}/{repo}:{tag}" for repo, tags in self.images.items()
                if not repositories or repo in repositories for tag in tags]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ScanStore:
    return ScanStore(tmp_path / "moray.db", clock=clock)


def test_registries_and_images_are_queued_on_their_interval(store: ScanStore,
                                                            clock: Clock) -> None:
    registry = FakeRegistry({"team/app": ["1", "2"], "team/db": ["1"]})
    sched = Scheduler(store, lister=registry,
                      resolve=lambda ref: ("u", "p") if ref == "env:REG" else (None, None))
    store.add_registry("127.0.0.1:5000", repositories=["team/app"], credentials="env:REG",
                       insecure=True, interval_seconds=60, policy=POLICY)
    store.add_image("127.0.0.1:5000/team/db:1", interval_seconds=30)
    report = sched.tick()
    assert (report.registries, report.images, report.queued) == (1, 1, 3)
    assert registry.calls == [("127.0.0.1:5000", True, "u", ["team/app"])]
    job = store.claim_scan("w")
    assert job == ScanJob(job.id, "127.0.0.1:5000/team/app:1", POLICY, 1, True, "env:REG")
    assert sched.tick().queued == 0                       # nothing due yet
    clock.now += 31
    assert sched.tick().images == 1                       # the image, not the registry
    assert len(store.jobs()) == 3                         # still queued: not doubled
    clock.now += 30
    registry.fail = True
    report = sched.tick()
    assert report.registries == 1 and "cannot reach" in report.errors[0]
    assert "cannot reach" in store.registries()[0].last_error


def test_new_vulnerability_data_queues_rescans(store: ScanStore) -> None:
    sched = Scheduler(store, lister=FakeRegistry({}))
    store.enqueue_scan("r/app:1", POLICY)
    job = store.claim_scan("w")
    assert job is not None
    store.record_verdict("sha256:a", "r/app:1", "p", True, [])
    store.finish_scan(job.id, "w", digest="sha256:a")
    assert sched.tick().rescans == 0
    store.record_import("new/", 2, 2, 0)
    assert sched.tick().rescans == 1 and sched.tick().rescans == 0


def test_server_thread_ticks_when_woken(store: ScanStore) -> None:
    sched = Scheduler(store, lister=FakeRegistry({"a": ["1"]}), poll_seconds=60)
    sched.start()
    try:
        store.add_registry("127.0.0.1:5000")
        sched.wake()
        deadline = threading.Event()
        for _ in range(100):
            if store.jobs():
                break
            deadline.wait(0.05)
        assert [j["image"] for j in store.jobs()] == ["127.0.0.1:5000/a:1"]
    finally:
        sched.stop()


def test_registration_checks() -> None:
    assert check_registry("127.0.0.1:5000", True) == "127.0.0.1:5000"
    assert check_registry("registry.example.com", False)
    with pytest.raises(ScanError, match="loopback"):
        check_registry("registry.example.com", True)
    with pytest.raises(ScanError, match="host"):
        check_registry("http://x/y", False)
    with pytest.raises(ScanError, match="loopback"):
        check_image("registry.example.com/a:1", True)
    assert check_policy("") == "" and check_policy(POLICY) == POLICY
    with pytest.raises(ScanError, match="ImageAssurancePolicy"):
        check_policy("kind: RuntimePolicy\n")


def test_credentials_references(tmp_path: Path) -> None:
    assert resolve("") == (None, None)
    assert resolve("env:REG", {"REG_USERNAME": "u", "REG_PASSWORD": "p"}) == ("u", "p")
    with pytest.raises(RegistryError, match="REG_USERNAME"):
        resolve("env:REG", {})
    plain, js = tmp_path / "plain", tmp_path / "json"
    plain.write_text("robot:s3cret:with:colons\n")
    js.write_text('{"username": "robot", "password": "x"}')
    assert resolve(f"file:{plain}") == ("robot", "s3cret:with:colons")
    assert resolve(f"file:{js}") == ("robot", "x")
    with pytest.raises(RegistryError, match="cannot read"):
        resolve(f"file:{tmp_path}/missing")
    for bad in ("s3cret", "env:A-B", "file:relative"):
        with pytest.raises(RegistryError):
            check_reference(bad)


def test_stopped_worker_gives_its_job_back(tmp_path: Path) -> None:
    store = ScanStore(tmp_path / "real-clock.db")
    started, release = threading.Event(), threading.Event()

    def hanging_scan(job: ScanJob) -> ScanResult:
        started.set()
        release.wait(30)
        raise ScanError("interrupted")

    store.enqueue_scan("r/slow:1")
    stop = threading.Event()
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(run_worker(
        store, hanging_scan, name="w", stop=stop, lease_seconds=0.3, grace=0.2)))
    t.start()
    assert started.wait(10)
    threading.Event().wait(0.5)                          # more than a lease: extended
    assert store.claim_scan("other") is None
    stop.set()
    t.join(10)
    release.set()
    stats = out[0]
    assert stats.released == 1 and stats.done == 0      # type: ignore[attr-defined]
    (job,) = store.jobs()
    assert (job["status"], job["attempts"]) == ("queued", 0)


def test_moray_cli_registers_in_a_local_store(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from moray.controlplane.cli import main as moray
    from moray.controlplane.store.cpstore import ControlPlaneStore

    monkeypatch.delenv("MORAY_SERVER", raising=False)
    db = tmp_path / "moray.db"
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    assert moray(["--db", str(db), "scan", "registry", "add", "127.0.0.1:5000",
                  "--repository", "team/app", "--insecure-registry", "--interval", "60",
                  "--policy", str(policy), "--credentials", "env:REG"]) == 0
    assert moray(["--db", str(db), "scan", "image", "add", "127.0.0.1:5000/team/db:1",
                  "--insecure-registry"]) == 0
    assert moray(["--db", str(db), "scan", "registry", "add", "registry.example.com",
                  "--insecure-registry"]) == 2
    assert "loopback" in capsys.readouterr().err
    # the same registration twice: refused, one row stays
    assert moray(["--db", str(db), "scan", "registry", "add", "127.0.0.1:5000",
                  "--repository", "team/app", "--insecure-registry"]) == 1
    assert "registered already (id 1)" in capsys.readouterr().err
    assert moray(["--db", str(db), "scan", "image", "add", "127.0.0.1:5000/team/db:1",
                  "--insecure-registry"]) == 1
    assert "registered already (id 1)" in capsys.readouterr().err
    assert moray(["--db", str(db), "scan", "registry", "list"]) == 0
    listed = capsys.readouterr().out
    assert "127.0.0.1:5000  every 60s repositories=team/app images=0 insecure" in listed
    assert moray(["--db", str(db), "scan", "registry", "run", "1"]) == 0
    assert moray(["--db", str(db), "scan", "image", "remove", "7"]) == 1
    assert moray(["--db", str(db), "scan", "image", "remove", "1"]) == 0
    store = ScanStore(db)
    assert [r.repositories for r in store.registries()] == [["team/app"]]
    assert store.images() == []
    actions = [a["action"] for a in ControlPlaneStore(store.engine).audit_log()]
    assert actions == ["scan_registry.add", "scan_image.add", "scan_registry.run",
                       "scan_image.remove"]
