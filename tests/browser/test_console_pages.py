"""The console pages images, registries, audit, users and tokens, tenants in Debian's
headless chromium against a real moray server (SQLite), a real docker-registry on
127.0.0.1 and the server's own scan worker scanning a real image.

The image (tests/fixtures/images/scenarios.debian_app) has vulnerable Debian and Python
packages, an AWS key in /root/.aws/credentials (deleted by a later layer) and EICAR, plus
a layer with a key in a file whose name is markup: the images page shows its
vulnerabilities, its secrets by rule, file and line and never the key, the hostile file
name as text, EICAR, the failed controls and an SBOM link. A token created on the tokens page is
shown once, works, and is then listed without its secret; the change is in the audit log.
Screenshots go to $MORAY_ARTIFACTS/browser (tests/browser/uipages_harness.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.uipages_harness import (
    NEEDS_CHROMIUM,
    By,
    WebDriver,
    browser,
    csp_violations,
    go,
    shot,
    signed_in,
    wait,
    wait_css,
)
from tests.fixtures.images import rootfs, scenarios
from tests.fixtures.images.registry import push_image
from tests.helpers.advisories import ADVISORIES
from tests.helpers.controlplane import ServerProcess, policy_yaml, wait_for
from tests.helpers.registry import REGISTRY_BIN, docker_registry

pytestmark = [
    NEEDS_CHROMIUM,
    pytest.mark.skipif(REGISTRY_BIN is None, reason="Debian package docker-registry missing"),
]

POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: high, notRoot: true}\n")
REPO = "team/app"
# a file name the image's author chose: markup in it must be shown as text, never run
HOSTILE_PATH = "srv/<img src=x onerror=window.__xss=1>/<script>window.__xss=2</script>.ini"


class Console:
    def __init__(self, server: ServerProcess, digest: str, driver: WebDriver) -> None:
        self.server, self.digest, self.driver = server, digest, driver
        self.url = server.url
        self.password = (server.data_dir / "admin.password").read_text().strip()

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.server.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console-pages")
    (tmp / "registry").mkdir()
    with docker_registry(tmp / "registry") as registry:
        image = scenarios.debian_app()
        image.layers.append({HOSTILE_PATH: (f"[default]\naws_access_key_id = "
                                            f"{rootfs.AWS_KEY_ID}\n").encode()})
        digest = push_image(f"http://{registry}", REPO, "1.0", image)
        server = ServerProcess(tmp / "server", extra_args=(
            "--scan-poll-seconds", "0.3", "--scan-workers", "1")).start()
        try:
            server.import_advisories(ADVISORIES)
            con = Console(server, digest, None)  # type: ignore[arg-type]
            added = con.api("POST", "/api/v1/scan-registries", json={
                "registry": registry, "repositories": [REPO], "insecure": True,
                "interval_seconds": 86400, "policy": POLICY})
            assert added.status_code == 201, added.text
            wait_for(lambda: any(i["digest"] == digest for i in
                                 con.api("GET", "/api/v1/images").json()),
                     timeout=180, what="the image's verdict")
            with browser() as driver:
                con.driver = driver
                signed_in(driver, server.url, "admin", con.password)
                yield con
        finally:
            server.stop()


def test_images_page_shows_the_scan_without_secret_values(console: Console) -> None:
    d = console.driver
    link = go(d, console.url, "images", "#image-list a.image-link")
    assert REPO in link.text
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert "non-compliant" in row.text
    shot(d, "images-list")
    link.click()
    wait_css(d, "#vulnerabilities tr.vuln")
    assert d.find_element(By.ID, "image-digest").text == console.digest
    api_vulns = console.api("GET", f"/api/v1/images/{console.digest}/vulnerabilities").json()
    rows = d.find_elements(By.CSS_SELECTOR, "#vulnerabilities tr.vuln")
    assert len(rows) == len(api_vulns) > 0
    shown = {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows}
    assert shown == {v["id"] for v in api_vulns}
    # filter by severity: only that severity's rows remain
    sev = api_vulns[0]["severity"]
    d.find_element(By.CSS_SELECTOR, f"#severity-filter option[value='{sev}']").click()
    wait(d, lambda dd: len(dd.find_elements(By.CSS_SELECTOR, "#vulnerabilities tr.vuln")) ==
         sum(v["severity"] == sev for v in api_vulns), "the severity filter")
    # the verdict's failed controls
    assert d.find_elements(By.CSS_SELECTOR, "#verdicts ul.failed-controls li")
    # the secret: rule, file and line; never the key, not even a prefix of it
    secrets = d.find_element(By.ID, "secrets").text
    assert "/root/.aws/credentials" in secrets
    source = d.page_source
    for value in (rootfs.AWS_SECRET, rootfs.AWS_SECRET[:8], rootfs.AWS_KEY_ID,
                  rootfs.AWS_KEY_ID[4:12]):
        assert value not in source
    assert "eicar" in d.find_element(By.ID, "malware").text.lower()
    # the hostile file name is text in the page, and nothing of it ran
    assert f"/{HOSTILE_PATH}" in secrets
    assert d.execute_script("return window.__xss === undefined")
    assert not d.find_elements(By.CSS_SELECTOR, "#secrets img, #secrets script")
    href = d.find_element(By.ID, "sbom-download").get_attribute("href")
    assert href.endswith(f"/api/v1/images/{console.digest.replace(':', '%3A')}/sbom")
    assert console.api("GET", f"/api/v1/images/{console.digest}/sbom").json()["bomFormat"] \
        == "CycloneDX"
    shot(d, "image-detail")
    assert csp_violations(d) == []


def test_registries_page_shows_the_registry_and_its_jobs(console: Console) -> None:
    d = console.driver
    go(d, console.url, "registries", "#registries button.scan-now")
    assert REPO in d.find_element(By.ID, "registries").text
    wait(d, lambda dd: "done" in dd.find_element(By.ID, "scan-jobs").text, "a done job")
    before = len(console.api("GET", "/api/v1/scan-jobs").json())
    d.find_element(By.CSS_SELECTOR, "#registries button.scan-now").click()
    wait(d, lambda dd: "queued" in dd.find_element(By.CSS_SELECTOR, ".status").text,
         "the scan-now confirmation")
    wait_for(lambda: len(console.api("GET", "/api/v1/scan-jobs").json()) > before,
             timeout=60, what="the registry's new scan job")
    shot(d, "registries")


def test_token_shown_once_then_listed_without_it_and_audited(console: Console) -> None:
    d = console.driver
    go(d, console.url, "tokens", "#token-form")
    d.find_element(By.ID, "token-name").send_keys("ci-browser")
    d.find_element(By.CSS_SELECTOR, "#token-role option[value='viewer']").click()
    d.find_element(By.ID, "token-add").click()
    secret = wait_css(d, "#token-secret").get_attribute("value")
    assert secret.startswith("moray-viewer-")
    assert "shown only this once" in d.find_element(By.ID, "token-created").text
    shot(d, "token-created")
    who = console.api("GET", "/api/v1/whoami", token=secret)
    assert who.status_code == 200 and who.json()["role"] == "viewer"
    d.find_element(By.ID, "token-done").click()
    wait(d, lambda dd: not dd.find_elements(By.ID, "token-created"), "the secret to go")
    d.refresh()
    row = wait_css(d, "tr.token-row[data-name='ci-browser']")
    assert "active" in row.text and secret not in d.page_source
    shot(d, "tokens")
    # the audit log shows the creation, newest first, and filters by action
    go(d, console.url, "audit?action=api_token.", "#audit-entries tr.audit-row")
    first = d.find_elements(By.CSS_SELECTOR, "#audit-entries tr.audit-row")[0]
    assert "api_token.create" in first.text and "ci-browser" in first.text
    assert secret not in d.page_source
    shot(d, "audit")
    # revoke it from the page: the server refuses it at once
    go(d, console.url, "tokens", "tr.token-row[data-name='ci-browser'] button.revoke-token")
    d.execute_script("window.confirm = () => true")
    d.find_element(By.CSS_SELECTOR,
                   "tr.token-row[data-name='ci-browser'] button.revoke-token").click()
    wait(d, lambda dd: "revoked" in dd.find_element(
        By.CSS_SELECTOR, "tr.token-row[data-name='ci-browser']").text, "the revocation")
    assert console.api("GET", "/api/v1/whoami", token=secret).status_code == 401


def test_users_page_and_a_viewer_sees_no_edit_controls(console: Console) -> None:
    d = console.driver
    go(d, console.url, "users", "#user-form")
    password = "viewer-password-0123"
    d.find_element(By.ID, "user-name").send_keys("vera")
    d.find_element(By.ID, "user-password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "#user-role option[value='viewer']").click()
    d.find_element(By.ID, "user-add").click()
    wait_css(d, "tr.user-row[data-name='vera']")
    shot(d, "users")
    d.find_element(By.ID, "sign-out").click()
    signed_in(d, console.url, "vera", password)
    nav = d.find_element(By.CSS_SELECTOR, "nav").text
    assert "Images" in nav and "API tokens" not in nav and "Audit log" not in nav
    go(d, console.url, "registries", "#registries table")
    assert not d.find_elements(By.CSS_SELECTOR, "#registry-form, button.scan-now")
    go(d, console.url, "users", "#password-form")
    assert not d.find_elements(By.ID, "user-form")
    shot(d, "viewer-registries")
    d.find_element(By.ID, "sign-out").click()
    signed_in(d, console.url, "admin", console.password)
    # change the role, then disable: both reach the server

    def vera() -> dict[str, Any]:
        return next(u for u in console.api("GET", "/api/v1/users").json() if u["name"] == "vera")

    go(d, console.url, "users", "tr.user-row[data-name='vera'] select.user-role")
    d.find_element(By.CSS_SELECTOR,
                   "tr.user-row[data-name='vera'] select.user-role option[value='auditor']").click()
    wait_for(lambda: vera()["role"] == "auditor", what="vera's new role")
    wait_css(d, "tr.user-row[data-name='vera'] button.toggle-user").click()
    wait_for(lambda: vera()["disabled"] is True, what="vera disabled")
    wait(d, lambda dd: "disabled" in dd.find_element(
        By.CSS_SELECTOR, "tr.user-row[data-name='vera']").text, "the disabled state")


def test_tenant_manager_distributes_and_a_tenants_admin_sees_only_its_own(
        console: Console) -> None:
    """The global admin creates two tenants and distributes one policy to both from the
    Tenant Manager; the admin of tenant blue sees none of the other tenants' users,
    tokens, audit entries or tenants."""
    d = console.driver
    go(d, console.url, "tenants", "#tenant-form")
    for name in ("blue", "green"):
        d.find_element(By.ID, "tenant-name").send_keys(name)
        d.find_element(By.ID, "tenant-add").click()
        wait_css(d, f"tr.tenant-row[data-tenant='{name}']")
    wait_css(d, "#distribute-form input.dist-tenant[data-tenant='green']")
    for name in ("blue", "green"):
        d.find_element(By.CSS_SELECTOR, f"input.dist-tenant[data-tenant='{name}']").click()
    d.find_element(By.ID, "dist-content").send_keys(policy_yaml("baseline"))
    d.find_element(By.ID, "dist-comment").send_keys("from the browser test")
    d.find_element(By.ID, "dist-send").click()
    wait(d, lambda dd: "Stored in 2 tenants" in dd.find_element(By.ID, "distribute-form").text,
         "the distribution result")
    shot(d, "tenant-manager")
    for name in ("blue", "green"):
        got = console.api("GET", "/api/v1/policies", params={"tenant": name}).json()
        assert [p["name"] for p in got] == ["baseline"]
    assert console.api("GET", "/api/v1/policies", params={"tenant": "default"}).json() == [] \
        or all(p["name"] != "baseline"
               for p in console.api("GET", "/api/v1/policies",
                                    params={"tenant": "default"}).json())
    # blue's admin, made on the users page
    go(d, console.url, "users", "#user-form")
    password = "blue-admin-password-1"
    d.find_element(By.ID, "user-name").send_keys("blue-admin")
    d.find_element(By.ID, "user-password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "#user-role option[value='admin']").click()
    d.find_element(By.ID, "user-tenant").send_keys("blue")
    d.find_element(By.ID, "user-add").click()
    wait_css(d, "tr.user-row[data-name='blue-admin']")
    d.find_element(By.ID, "sign-out").click()
    signed_in(d, console.url, "blue-admin", password)
    try:
        go(d, console.url, "tenants", "#tenants table")
        assert [r.get_attribute("data-tenant") for r in
                d.find_elements(By.CSS_SELECTOR, "tr.tenant-row")] == ["blue"]
        assert not d.find_elements(By.CSS_SELECTOR, "#tenant-form, #distribute-form, "
                                   "button.delete-tenant")
        shot(d, "tenant-blue-tenants")
        go(d, console.url, "users", "#users table")
        names = [r.get_attribute("data-name") for r in
                 d.find_elements(By.CSS_SELECTOR, "tr.user-row")]
        assert names == ["blue-admin"]
        go(d, console.url, "tokens", "#tokens table")
        assert not d.find_elements(By.CSS_SELECTOR, "tr.token-row")
        go(d, console.url, "audit", "#audit-entries table")
        audit = d.find_element(By.ID, "audit-entries").text
        assert "ci-browser" not in audit and "vera" not in audit
        shot(d, "tenant-blue-audit")
    finally:
        d.find_element(By.ID, "sign-out").click()
        signed_in(d, console.url, "admin", console.password)


@pytest.mark.skip(reason="needs i-tenancy's tenant scoping of scans, verdicts and registries "
                  "(image_tenant), uncommitted on i-tenancy when this branch was last merged")
def test_a_second_tenants_user_sees_none_of_the_first_tenants_images(console: Console) -> None:
    d = console.driver
    password = "blue-viewer-password-1"
    assert console.api("POST", "/api/v1/users", json={
        "name": "blue-viewer", "password": password, "role": "viewer",
        "tenant": "blue"}).status_code == 201
    d.find_element(By.ID, "sign-out").click()
    signed_in(d, console.url, "blue-viewer", password)
    try:
        go(d, console.url, "images", "#image-list table")
        assert REPO not in d.find_element(By.ID, "image-list").text
        go(d, console.url, f"images?digest={console.digest}", "#page-images")
        assert "CVE-" not in d.find_element(By.ID, "page-images").text
        go(d, console.url, "registries", "#registries table")
        assert REPO not in d.find_element(By.ID, "registries").text
        assert "team/app" not in d.find_element(By.ID, "scan-jobs").text
        shot(d, "tenant-blue-images")
    finally:
        d.find_element(By.ID, "sign-out").click()
        signed_in(d, console.url, "admin", console.password)
