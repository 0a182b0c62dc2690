"""The console pages images, registries, audit, users, API tokens and tenants in headless
chromium (the harness of conftest.py: one real moray server, one browser), with a real
scan: Debian's docker-registry on 127.0.0.1 holds an image that the server's own scan
worker scans against the real advisories.

The image (tests/fixtures/images/scenarios.debian_app) has vulnerable Debian and Python
packages, an AWS key in /root/.aws/credentials (deleted by a later layer) and EICAR, plus
a layer with a key in a file whose name is markup: the images page shows its
vulnerabilities (sortable, filtered by severity), its secrets by rule, file and line and
never the key, the hostile file name as text, EICAR, the failed controls and an SBOM
link. A token created on the tokens page is shown once, works, and is then listed
without its secret; the change is in the audit log. The Tenant Manager distributes a
policy to two tenants, whose admin then sees only its own tenant. Screenshots:
$MORAY_ARTIFACTS/browser/<test>/.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Console, ConsoleEnv
from tests.fixtures.images import rootfs, scenarios
from tests.fixtures.images.registry import push_image
from tests.helpers.advisories import ADVISORIES
from tests.helpers.controlplane import policy_yaml, wait_for
from tests.helpers.registry import REGISTRY_BIN, docker_registry


def in_browser(test: Any) -> Any:
    """The marks of a browser test that runs (a skipped one has no integration mark: with
    MORAY_REQUIRE_INTEGRATION=1 a skipped integration test fails the run)."""
    for mark in (pytest.mark.browser, pytest.mark.integration,
                 pytest.mark.skipif(REGISTRY_BIN is None,
                                    reason="Debian package docker-registry missing")):
        test = mark(test)
    return test


POLICY = ("apiVersion: moray/v1\nkind: ImageAssurancePolicy\nmetadata: {name: strict}\n"
          "spec: {failOn: high, notRoot: true}\n")
REPO = "team/app"
# a file name the image's author chose: markup in it must be shown as text, never run
HOSTILE_PATH = "srv/<img src=x onerror=window.__xss=1>/<script>window.__xss=2</script>.ini"


@dataclass
class Scanned:
    env: ConsoleEnv
    digest: str

    @property
    def url(self) -> str:
        return self.env.server.url

    @property
    def password(self) -> str:
        return self.env.passwords["admin"]

    def api(self, method: str, path: str, token: str | None = None, **kw: Any
            ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.env.server.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def scanned(console_env: ConsoleEnv, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Scanned]:
    """The console's server scans a registry's image (its own scan worker)."""
    if REGISTRY_BIN is None:
        pytest.skip("Debian package docker-registry missing")
    root = tmp_path_factory.mktemp("console-registry")
    with docker_registry(root) as registry:
        image = scenarios.debian_app()
        image.layers.append({HOSTILE_PATH: (f"[default]\naws_access_key_id = "
                                            f"{rootfs.AWS_KEY_ID}\n").encode()})
        digest = push_image(f"http://{registry}", REPO, "1.0", image)
        console_env.server.import_advisories(ADVISORIES)
        s = Scanned(console_env, digest)
        added = s.api("POST", "/api/v1/scan-registries", json={
            "registry": registry, "repositories": [REPO], "insecure": True,
            "interval_seconds": 86400, "policy": POLICY})
        assert added.status_code == 201, added.text
        wait_for(lambda: any(i["digest"] == digest for i in s.api("GET", "/api/v1/images").json()),
                 timeout=180, what="the image's verdict")
        yield s


def signed_in(console: Console, scanned: Scanned, user: str = "admin",
              password: str | None = None) -> None:
    console.login(user, password or scanned.password)


@in_browser
def test_images_page_shows_the_scan_without_secret_values(console: Console,
                                                          scanned: Scanned) -> None:
    signed_in(console, scanned)
    link = console.visit("images", "#image-list a.image-link")
    assert REPO in link.text
    assert "non-compliant" in console.css("#image-list tbody tr").text
    link.click()
    console.wait_css("#vulnerabilities tr.vuln")
    console.screenshot("image-detail")
    assert console.css("#image-digest").text == scanned.digest
    api_vulns = scanned.api("GET", f"/api/v1/images/{scanned.digest}/vulnerabilities").json()
    rows = console.all("#vulnerabilities tr.vuln")
    assert len(rows) == len(api_vulns) > 0
    assert {r.find_elements("tag name", "td")[0].text for r in rows} == \
        {v["id"] for v in api_vulns}
    # each row's installed and fixed version and severity, as the API gives them
    shown_rows = {tuple(td.text for td in r.find_elements("tag name", "td")) for r in rows}
    assert shown_rows == {(v["id"], v["package"], v["version"], v["fixed_version"] or "no fix",
                           str(v["severity"]).lower()) for v in api_vulns}
    assert any(v["fixed_version"] for v in api_vulns)
    # sorted by severity, most severe first; a click on "Package" sorts by package
    rank = ["critical", "high", "medium", "low", "unknown"]
    shown = [r.find_elements("tag name", "td")[4].text for r in rows]
    assert shown == sorted(shown, key=rank.index)
    console.css("th.sortable[data-key='package']").click()
    console.until(lambda: [r.find_elements("tag name", "td")[1].text for r in
                           console.all("#vulnerabilities tr.vuln")] ==
                  sorted(v["package"] for v in api_vulns), "rows sorted by package")
    # filtered by severity: only that severity's rows remain
    sev = api_vulns[0]["severity"]
    console.css(f"#severity-filter option[value='{sev}']").click()
    console.until(lambda: len(console.all("#vulnerabilities tr.vuln")) ==
                  sum(v["severity"] == sev for v in api_vulns), "the severity filter")
    # the verdict with its failed controls
    assert console.all("#verdicts ul.failed-controls li")
    # the secrets: rule, file and line; never the key, not even a part of it
    secrets = console.css("#secrets").text
    assert "/root/.aws/credentials" in secrets and f"/{HOSTILE_PATH}" in secrets
    source = console.driver.page_source
    for value in (rootfs.AWS_SECRET, rootfs.AWS_SECRET[:8], rootfs.AWS_KEY_ID,
                  rootfs.AWS_KEY_ID[4:12]):
        assert value not in source
    # the hostile file name is text, and nothing of it ran
    assert console.driver.execute_script("return window.__xss === undefined")
    assert not console.all("#secrets img, #secrets script")
    assert "eicar" in console.css("#malware").text.lower()
    href = console.css("#sbom-download").get_attribute("href")
    assert href.endswith(f"/api/v1/images/{scanned.digest.replace(':', '%3A')}/sbom")
    assert scanned.api("GET", f"/api/v1/images/{scanned.digest}/sbom").json()["bomFormat"] \
        == "CycloneDX"
    console.screenshot("image-filtered")


@in_browser
def test_registries_page_scan_now_and_progress(console: Console, scanned: Scanned) -> None:
    signed_in(console, scanned)
    console.visit("registries", "#registries button.scan-now")
    assert REPO in console.css("#registries").text
    console.wait_text("#scan-jobs", "done")
    before = len(scanned.api("GET", "/api/v1/scan-jobs").json())
    console.css("#registries button.scan-now").click()
    console.wait_text(".status", "queued")
    wait_for(lambda: len(scanned.api("GET", "/api/v1/scan-jobs").json()) > before,
             timeout=60, what="the registry's new scan job")
    console.screenshot("scan-now")


@in_browser
def test_token_shown_once_then_listed_without_it_and_audited(console: Console,
                                                            scanned: Scanned) -> None:
    signed_in(console, scanned)
    console.visit("tokens", "#token-form")
    console.css("#token-name").send_keys("ci-browser")
    console.css("#token-role option[value='viewer']").click()
    console.css("#token-add").click()
    secret = console.wait_css("#token-secret").get_attribute("value")
    assert secret.startswith("moray-viewer-")
    assert "shown only this once" in console.css("#token-created").text
    console.screenshot("token-created")
    who = scanned.api("GET", "/api/v1/whoami", token=secret)
    assert who.status_code == 200 and who.json()["role"] == "viewer"
    # scoped and expiring as the form said: role viewer, every tenant, the default 30 days
    [made] = [t for t in scanned.api("GET", "/api/v1/tokens").json() if t["name"] == "ci-browser"]
    assert (made["role"], made["tenant"]) == ("viewer", None)
    assert made["expires_at"] - made["created_at"] == pytest.approx(30 * 86400, abs=5)
    console.css("#token-done").click()
    console.until(lambda: not console.all("#token-created"), "the secret to go")
    console.driver.refresh()
    row = console.wait_css("tr.token-row[data-name='ci-browser']")
    assert "active" in row.text and secret not in console.driver.page_source
    # the audit log shows the creation, newest first, filtered by action
    console.visit("audit?action=api_token.", "#audit-entries tr.audit-row")
    first = console.all("#audit-entries tr.audit-row")[0]
    assert "api_token.create" in first.text and "ci-browser" in first.text
    assert secret not in console.driver.page_source
    # revoked from the page: the server refuses it at once
    console.visit("tokens", "tr.token-row[data-name='ci-browser'] button.revoke-token")
    console.driver.execute_script("window.confirm = () => true")
    console.css("tr.token-row[data-name='ci-browser'] button.revoke-token").click()
    console.wait_text("tr.token-row[data-name='ci-browser']", "revoked")
    assert scanned.api("GET", "/api/v1/whoami", token=secret).status_code == 401


@in_browser
def test_users_page_and_a_viewer_without_edit_controls(console: Console,
                                                       scanned: Scanned) -> None:
    signed_in(console, scanned)
    console.visit("users", "#user-form")
    password = "viewer-password-0123"
    console.css("#user-name").send_keys("vera")
    console.css("#user-password").send_keys(password)
    console.css("#user-role option[value='viewer']").click()
    console.css("#user-add").click()
    console.wait_css("tr.user-row[data-name='vera']")
    console.css("#sign-out").click()
    console.wait_css("#login-username")
    signed_in(console, scanned, "vera", password)
    nav = console.css("nav").text
    assert "Images" in nav and "API tokens" not in nav and "Audit log" not in nav
    console.visit("registries", "#registries table")
    assert not console.all("#registry-form, button.scan-now")
    console.visit("users", "#password-form")
    assert not console.all("#user-form")
    # her own password: changed from the form, the new one signs in
    console.css("#pw-current").send_keys(password)
    console.css("#pw-new").send_keys(password + "-new")
    console.css("#pw-again").send_keys(password + "-new")
    console.css("#pw-save").click()
    console.wait_text("#password-form", "Password changed")
    refused = httpx.post(scanned.url + "/api/v1/session",
                         json={"username": "vera", "password": password}, timeout=30)
    assert refused.status_code == 401
    console.css("#sign-out").click()
    console.wait_css("#login-username")
    # back as admin: change her role, then disable her; both reach the server
    signed_in(console, scanned)

    def vera() -> dict[str, Any]:
        return next(u for u in scanned.api("GET", "/api/v1/users").json()
                    if u["name"] == "vera")

    console.visit("users", "tr.user-row[data-name='vera'] select.user-role")
    console.css("tr.user-row[data-name='vera'] select.user-role "
                "option[value='auditor']").click()
    wait_for(lambda: vera()["role"] == "auditor", what="vera's new role")
    console.wait_css("tr.user-row[data-name='vera'] button.toggle-user").click()
    wait_for(lambda: vera()["disabled"] is True, what="vera disabled")
    console.wait_text("tr.user-row[data-name='vera']", "disabled")
    console.screenshot("users")


@in_browser
def test_tenant_manager_distributes_and_a_tenants_admin_sees_only_its_own(
        console: Console, scanned: Scanned) -> None:
    """The global admin creates two tenants and distributes one policy to both from the
    Tenant Manager; the admin of tenant blue sees none of the other tenants' users,
    tokens, audit entries or tenants."""
    signed_in(console, scanned)
    console.visit("tenants", "#tenant-form")
    for name in ("blue", "green"):
        console.css("#tenant-name").send_keys(name)
        console.css("#tenant-add").click()
        console.wait_css(f"tr.tenant-row[data-tenant='{name}']")
    console.wait_css("#distribute-form input.dist-tenant[data-tenant='green']")
    for name in ("blue", "green"):
        console.css(f"input.dist-tenant[data-tenant='{name}']").click()
    console.css("#dist-content").send_keys(policy_yaml("baseline"))
    console.css("#dist-comment").send_keys("from the browser test")
    console.css("#dist-send").click()
    console.wait_text("#distribute-form", "Stored in 2 tenants")
    console.screenshot("tenant-manager")
    for name in ("blue", "green"):
        got = scanned.api("GET", "/api/v1/policies", params={"tenant": name}).json()
        assert [p["name"] for p in got] == ["baseline"]
    assert all(p["name"] != "baseline" for p in scanned.api(
        "GET", "/api/v1/policies", params={"tenant": "default"}).json())
    # blue's admin, made on the users page
    console.visit("users", "#user-form")
    password = "blue-admin-password-1"
    console.css("#user-name").send_keys("blue-admin")
    console.css("#user-password").send_keys(password)
    console.css("#user-role option[value='admin']").click()
    console.css("#user-tenant").send_keys("blue")
    console.css("#user-add").click()
    console.wait_css("tr.user-row[data-name='blue-admin']")
    console.css("#sign-out").click()
    console.wait_css("#login-username")
    signed_in(console, scanned, "blue-admin", password)
    console.visit("tenants", "#tenants table")
    assert [r.get_attribute("data-tenant") for r in console.all("tr.tenant-row")] == ["blue"]
    assert not console.all("#tenant-form, #distribute-form, button.delete-tenant")
    console.visit("users", "#users table")
    assert [r.get_attribute("data-name") for r in console.all("tr.user-row")] == ["blue-admin"]
    console.visit("tokens", "#tokens table")
    assert not console.all("tr.token-row")
    console.visit("audit", "#audit-entries table")
    audit = console.css("#audit-entries").text
    assert "ci-browser" not in audit and "vera" not in audit
    console.screenshot("tenant-blue-audit")


@in_browser
def test_a_second_tenants_user_sees_none_of_the_first_tenants_images(
        console: Console, scanned: Scanned) -> None:
    """The image the global admin's registry brought in is the default tenant's: a viewer
    of tenant blue sees neither it, nor its detail, nor the registry or its jobs."""
    assert scanned.api("POST", "/api/v1/tenants", json={"name": "blue"}).status_code in (
        201, 409)
    password = "blue-viewer-password-1"
    assert scanned.api("POST", "/api/v1/users", json={
        "name": "blue-viewer", "password": password, "role": "viewer",
        "tenant": "blue"}).status_code == 201
    signed_in(console, scanned, "blue-viewer", password)
    console.visit("images", "#image-list table")
    assert REPO not in console.css("#image-list").text
    console.visit(f"images?digest={scanned.digest}", "#image-missing")
    assert "CVE-" not in console.css("#page-images").text
    console.screenshot("blue-image-missing")
    console.visit("registries", "#registries table")
    assert REPO not in console.css("#registries").text
    assert REPO not in console.css("#scan-jobs").text


@in_browser
def test_overview_images_by_verdict_and_a_registry_added_from_the_page(
        console: Console, scanned: Scanned) -> None:
    """The overview counts the scanned image by verdict as the API does; a registry added
    with the page's form (repositories, schedule, plain HTTP) is listed with its schedule,
    stored, then removed from the page."""
    signed_in(console, scanned)
    counts = scanned.api("GET", "/api/v1/overview").json()["images_by_verdict"]
    assert counts["non-compliant"] >= 1
    console.visit("overview", "#overview-images .verdicts")
    assert [b.text for b in console.all("#overview-images .badge")] == [
        f"{k} {counts[k]}" for k in ("compliant", "non-compliant", "unscanned")]

    def added() -> list[dict[str, Any]]:
        return [r for r in scanned.api("GET", "/api/v1/scan-registries").json()
                if r["repositories"] == ["ui/added"]]

    console.visit("registries", "#registry-form")
    console.css("#reg-host").send_keys("127.0.0.1:9")
    console.css("#reg-repos").send_keys("ui/added")
    console.css("#reg-interval").clear()
    console.css("#reg-interval").send_keys("7200")
    console.css("#reg-insecure").click()
    console.css("#reg-add").click()
    row = console.wait_text("#registries tbody tr", "ui/added")
    assert "every 2h" in row.text
    [stored] = added()
    assert (stored["registry"], stored["interval_seconds"], stored["insecure"]) == (
        "127.0.0.1:9", 7200, True)
    console.screenshot("registry-added")
    console.driver.execute_script("window.confirm = () => true")
    row.find_element("css selector", f"button.danger[data-id='{stored['id']}']").click()
    console.until(lambda: "ui/added" not in console.css("#registries").text,
                  "the registry gone from the page")
    assert added() == []
