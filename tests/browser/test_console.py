"""The web console in a real browser (headless chromium) against a real moray server with
simulated mTLS agents (conftest.py): sign-in, every core page with the real data, a
policy edit with an error shown at its line and nothing saved, a fix that reaches the
agents (their acknowledgement appears), a viewer without edit controls (and the server
refusing the call anyway), an attacker-named container rendered as text, and no CSP
violation in the browser's console (checked after every test by the fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import PASSWORD, XSS_CONTAINER, Console, ConsoleEnv
from tests.helpers.controlplane import policy_yaml, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_sign_in_refused_then_accepted_and_signed_out(console: Console,
                                                      console_env: ConsoleEnv) -> None:
    console.open()
    console.wait_css("#login-username").send_keys("oper")
    console.css("#login-password").send_keys("not the password")
    console.css("#login-submit").click()
    console.wait_text("#login-status", "Invalid username or password")
    console.screenshot("login-refused")
    console.login("oper", PASSWORD)
    assert "operator" in console.css("#session-user").text
    # the session cookie is HttpOnly: no script can read it
    assert "moray_session" not in console.driver.execute_script("return document.cookie")
    console.css("#sign-out").click()
    console.wait_css("#login-username")
    console.open("#/agents")          # a reload after sign-out: the sign-in form again
    console.wait_css("#login-username")


def test_core_pages_show_the_real_data(console: Console, console_env: ConsoleEnv) -> None:
    console.login("admin", console_env.passwords["admin"])
    # overview: both agents online, the alerts counted, the top rule named
    console.visit("overview", "#overview-agents")
    console.wait_text("#stat-online", "2")
    console.wait_text("#stat-alerts", "6")
    console.wait_text("#overview-rules", "Shell in container")
    assert console.all("svg.chart rect.bar")
    # a top rule links to its alerts
    console.css("#overview-rules a").click()
    console.until(lambda: len(console.all("#page-alerts #events-list tbody tr[data-seq]")) == 4,
                  "the 4 alerts of the top rule")
    console.screenshot("top-rule-alerts")
    # agents: hostnames, labels, version and tiers from the agents' status
    console.visit("agents", "#agents-list table")
    for agent in console_env.agents:
        console.wait_css(f'tr[data-agent="{agent.agent_id}"]')
    console.wait_text("#agents-list", "env=prod")
    console.wait_text("#agents-list", "0.1.0")
    console.wait_text("#agents-list", "exec: lsm")
    console.css(f'tr[data-agent="{console_env.agents[0].agent_id}"]').click()
    detail = console.wait_css("#agent-detail")
    console.wait_text("#agent-detail", "6.1.0-test")
    kinds = detail.find_elements(By.XPATH, ".//tr[th='kind']/td")
    assert [k.text for k in kinds] == ["agent"]          # enrolled without a kind
    console.wait_text("#agent-detail", "web")
    assert detail.find_element(By.CSS_SELECTOR, "#agent-revoke")    # an admin may revoke
    console.screenshot("agent-detail")
    # policies: the policy, its version and how many agents hold it
    console.visit("policies", 'tr[data-policy="web"]')
    console.wait_text('tr[data-policy="web"]', "2/2")
    # events: newest first, a row opens the detail
    console.visit("events", "#events-list tbody tr[data-seq]")
    rows = console.all("#events-list tbody tr[data-seq]")
    assert len(rows) >= 12          # the follow test adds one
    seqs = [int(r.get_attribute("data-seq")) for r in rows]
    assert seqs == sorted(seqs, reverse=True)
    console.wait_text("#events-list", "web-1")
    rows[-1].click()
    console.wait_text("#event-detail h2", f"Event {seqs[-1]}: exec")
    console.wait_text("#event-detail", "/bin/ls")
    console.screenshot("event-detail")
    # alerts: only alerts, filtered by rule through the form
    console.visit("alerts", "#events-list tbody tr[data-seq]")
    assert len(console.all("#events-list tbody tr[data-seq]")) == 6
    # an alert's detail: the process ancestry, from its process up to the oldest exec
    console.all("#events-list tbody tr[data-seq]")[-1].click()
    ancestry = console.wait_css("#event-ancestry")
    steps = [li.text for li in ancestry.find_elements(By.TAG_NAME, "li")]
    assert [s.split(" pid")[0] for s in steps] == [f"/bin/ls /tmp/{i}" for i in range(5, -1, -1)]
    console.screenshot("alert-ancestry")
    console.css("#filter-rule").send_keys("Read sensitive file")
    console.css("#filter-apply").click()
    console.until(lambda: len(console.all("#events-list tbody tr[data-seq]")) == 2,
                  "2 alerts of rule 'Read sensitive file'")
    console.screenshot("alerts-filtered")


BROKEN = """apiVersion: moray/v1
kind: RuntimePolicy
metadata:
  name: web
spec:
  scope:
    agents:
      labels:
        env: prod
    host: true
  mode: enforce
  exec:
    deny:
      - /bin/sh
  bogus: 1
"""


def _set_editor(console: Console, text: str) -> None:
    console.driver.execute_script(
        "const a = document.getElementById('policy-editor'); a.value = arguments[0];"
        "a.dispatchEvent(new Event('input'));", text)


def test_policy_error_at_its_line_then_fix_reaches_the_agents(
        console: Console, console_env: ConsoleEnv) -> None:
    admin = console_env.admin
    before = admin("GET", "/api/v1/policies/web/history")
    console.login("oper", PASSWORD)
    console.visit("policies?name=web&tenant=default", "#policy-editor")
    _set_editor(console, BROKEN)
    console.css("#policy-save").click()
    problems = console.wait_css("#policy-problems")
    assert "Nothing was saved" in problems.text
    assert "bogus" in problems.text
    bad = console.all(".editor .gutter div.bad")
    assert [b.text for b in bad] == ["15"]
    console.screenshot("policy-lint-error")
    assert admin("GET", "/api/v1/policies/web/history") == before      # nothing stored
    # the fix: a new version, pushed to both agents, whose acknowledgements appear
    version = before[-1]["version"] + 1
    _set_editor(console, BROKEN.replace("  bogus: 1\n", "      - /usr/bin/nc\n"))
    console.css("#policy-comment").send_keys("deny nc")
    console.css("#policy-save").click()
    console.wait_text("#policy-saved", f"v{version}")
    for agent in console_env.agents:
        wait_for(lambda a=agent: a.versions().get("web") == version, timeout=30,
                 what=f"agent {agent.agent_id} to hold web v{version}")
        console.wait_css(f'#policy-acks tr[data-agent="{agent.agent_id}"]'
                         f'[data-version="{version}"]', timeout=20)
    console.wait_text("#policy-acks", "APPLIED")
    console.screenshot("policy-acked")
    # history and diff show the change
    console.wait_text("#policy-history", "deny nc")
    console.wait_text("#policy-diff .add", "/usr/bin/nc")


def test_viewer_sees_no_edit_controls_and_the_server_refuses(
        console: Console, console_env: ConsoleEnv) -> None:
    console.login("view", PASSWORD)
    console.visit("policies", 'tr[data-policy="web"]')
    assert not console.all("#policy-new")
    console.visit("policies?name=web&tenant=default", "#policy-yaml")
    assert not console.all("#policy-editor") and not console.all("#policy-save")
    assert not console.all("#policy-history button")
    console.visit(f"agents?id={console_env.agents[0].agent_id}", "#agent-detail")
    assert not console.all("#agent-revoke") and not console.all("#agent-labels-save")
    # the same call from the viewer's session, with its CSRF token: refused by the server
    status = console.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
          const s = await (await fetch('/api/v1/session', {credentials: 'same-origin'})).json();
          const r = await fetch('/api/v1/policies', {method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token},
            body: JSON.stringify({content: 'x: 1'})});
          done(r.status);
        })();""")
    assert status == 403


def test_hostile_container_name_renders_as_text(console: Console,
                                                console_env: ConsoleEnv) -> None:
    console.login("view", PASSWORD)
    seq = console_env.seqs["xss"]
    console.visit(f"alerts?seq={seq}", f'#events-list tr[data-seq="{seq}"]')
    row = console.css(f'#events-list tr[data-seq="{seq}"]')
    assert XSS_CONTAINER in row.find_element(By.CSS_SELECTOR, "td.container").text
    console.wait_text("#event-detail", XSS_CONTAINER)
    console.screenshot("hostile-container")
    # nothing ran, and no element came out of the name
    assert console.driver.execute_script("return window.__moray_xss === undefined")
    assert not console.all("#page img")
    assert not console.all("#page script")


def test_the_csp_blocks_inline_script_and_the_harness_sees_it(console: Console) -> None:
    """The check every test ends with works: an inline script, added the way an injection
    would add one, does not run, and the violation is in the browser's log."""
    console.open()
    console.wait_css("#login-username")
    ran = console.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const s = document.createElement('script');
        s.textContent = 'window.__moray_inline = 1';
        document.body.appendChild(s);
        setTimeout(() => done(window.__moray_inline === 1), 200);""")
    assert ran is False
    console.until(lambda: any("Content Security Policy" in p for p in console.problems()),
                  "the CSP violation in the browser log")
    console.logs.clear()          # seen: not a failure of this test


def test_live_follow_shows_new_events(console: Console, console_env: ConsoleEnv) -> None:
    console.login("view", PASSWORD)
    console.visit("events?follow=1", "#events-list tbody tr[data-seq]")
    before = len(console.all("#events-list tbody tr[data-seq]"))
    agent = console_env.agents[1]
    payload = json.dumps({"type": "exec", "node": "node-c", "container": {
        "name": "follow-me", "image": "busybox"}, "process": {"args": ["/bin/true"]}}).encode()
    assert console_env.fleet.call(agent.send_events([("follow-1", "exec", payload)],
                                                    batch_id=7)) == 1
    console.wait_text("#events-list tbody tr:first-child", "follow-me", timeout=20)
    assert len(console.all("#events-list tbody tr[data-seq]")) == before + 1
    console.screenshot("followed")


def test_events_pages_follow_next(console: Console, console_env: ConsoleEnv) -> None:
    agent = console_env.agents[1]
    payload = json.dumps({"type": "exec", "node": "node-p", "process": {
        "args": ["/bin/date"]}}).encode()
    assert console_env.fleet.call(agent.send_events(
        [(f"page-{i}", "exec", payload) for i in range(60)], batch_id=8)) == 60
    console.login("view", PASSWORD)
    console.visit("events", "#events-list tbody tr[data-seq]")
    first = [int(r.get_attribute("data-seq")) for r in
             console.all("#events-list tbody tr[data-seq]")]
    assert len(first) == 50
    console.css("#page-older").click()
    console.until(lambda: console.all("#page-newest"), "the second page")
    console.screenshot("events-page-2")
    second = [int(r.get_attribute("data-seq")) for r in
              console.all("#events-list tbody tr[data-seq]")]
    assert second and max(second) < min(first)
    assert second == sorted(second, reverse=True)


def test_agents_and_images_pages_follow_next(console: Console,
                                             console_env: ConsoleEnv) -> None:
    """The agents list ("More") and the images list (Next, Previous) come a page at a
    time from the server (?per= rows a page), each row once, as the API lists them."""
    admin = console_env.admin
    for i in range(3):
        admin("POST", f"/api/v1/images/sha256:{i:064x}/verdicts", expect=200, json={
            "image": f"r.example/paged/app:{i}", "policy": "strict", "passed": i != 1})
    images = [i["digest"] for i in admin("GET", "/api/v1/images")]
    agents = [a["id"] for a in admin("GET", "/api/v1/agents")]
    assert len(images) >= 3 and len(agents) >= 2
    console.login("view", PASSWORD)

    def read(selector: str, attribute: str) -> list[str]:    # at once (no stale node)
        return list(console.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((e) => e.getAttribute(arguments[1]))", selector, attribute))

    def digests() -> list[str]:
        return read("#image-list tbody td code", "title")

    console.visit("images?per=2", "#image-list a.image-link")
    pages = [digests()]
    while console.css("#images-next").is_enabled():
        console.css("#images-next").click()
        console.until(lambda f=pages[-1]: digests() and digests() != f, "the next page")
        pages.append(digests())
    assert [d for page in pages for d in page] == images and len(pages) >= 2
    console.screenshot("images-last-page")
    console.css("#images-prev").click()
    console.until(lambda: digests() == pages[-2], "the page before")
    console.visit("agents?per=1", "#agents-list tbody tr[data-agent]")

    def rows() -> list[str]:
        return read("#agents-list tbody tr[data-agent]", "data-agent")

    assert rows() == agents[:1]
    while console.all("#agents-more"):
        count = len(rows())
        console.css("#agents-more").click()
        console.until(lambda c=count: len(rows()) > c, "one more agents page")
    assert rows() == agents
    console.screenshot("agents-all-pages")


TRICKY = {
    "apiVersion": "moray/v1", "kind": "RuntimePolicy",
    "metadata": {"name": "t", "labels": {"a.b/c": "yes", "n": "1.0", "e": ""}},
    "spec": {"exec": {"deny": ["/bin/sh", "*/nc", "a: b", "#x", " lead", "trail ", "~",
                               "null", "2024-01-01", "0x1f", "é ünï", "line\nbreak",
                               "'q'", '"dq"', "[x]", "{y}", "-", "- x", "@at", "%p"],
                      "allow": []},
             "n": [1, 2.5, -3, True, False, None, {}, [], [["nested"]],
                   {"k": "v", "list": [{"deep": 1}]}],
             "key with space": "v", "1": "numeric key", "true": "bool key"},
}


def test_policy_yaml_writer_round_trips_in_the_browser(console: Console) -> None:
    """text.js's toYaml, run in the browser, read back by PyYAML (the server's loader):
    the same document, for values that need quoting."""
    import yaml

    console.open()
    console.wait_css("#login-username")
    out = console.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/ui/text.js').then((m) => done({yaml: m.toYaml(arguments[0]),
          diff: m.lineDiff(['a', 'b', 'c'], ['a', 'x', 'c', 'd'])}));""", TRICKY)
    assert yaml.safe_load(out["yaml"]) == TRICKY
    assert [(d["op"], d["line"]) for d in out["diff"]] == [
        (" ", "a"), ("-", "b"), ("+", "x"), (" ", "c"), ("+", "d")]


def test_a_session_ended_elsewhere_brings_back_the_sign_in_form(
        console: Console, console_env: ConsoleEnv) -> None:
    import httpx

    console.login("view", PASSWORD)
    console.visit("agents", "#agents-list table")
    cookie = console.driver.get_cookie("moray_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(base_url=console_env.server.url,
                      cookies={"moray_session": cookie["value"]}) as other:
        csrf = other.get("/api/v1/session").json()["csrf_token"]
        assert other.delete("/api/v1/session",
                            headers={"X-CSRF-Token": csrf}).status_code == 204
    console.driver.execute_script("location.hash = '#/policies'")
    console.wait_text("#login-status", "Your session has ended")
    console.screenshot("session-ended")


def test_admin_revokes_an_agent(console: Console, console_env: ConsoleEnv,
                                tmp_path: Path) -> None:
    agent = console_env.fleet.enroll_many(console_env.server, tmp_path, 1, prefix="r",
                                          labels={"env": "doomed"})[0]
    wait_for(lambda: agent.connected, timeout=20, what="the extra agent's stream")
    console.login("admin", console_env.passwords["admin"])
    console.visit(f"agents?id={agent.agent_id}", "#agent-revoke")
    console.css("#agent-revoke").click()
    console.wait_text("#agent-revoke", "Confirm")             # a second click revokes
    console.css("#agent-revoke").click()
    console.wait_text("#agent-detail h2", "revoked")
    console.screenshot("agent-revoked")
    assert console_env.admin("GET", f"/api/v1/agents/{agent.agent_id}")["revoked"] is True
    assert not console.all("#agent-revoke")


def test_operator_rolls_back_a_policy(console: Console, console_env: ConsoleEnv) -> None:
    admin = console_env.admin
    admin.apply(policy_yaml("rb", labels={"env": "prod"}, deny="/bin/one"), source="rb.yaml")
    admin.apply(policy_yaml("rb", labels={"env": "prod"}, deny="/bin/two"), source="rb.yaml")
    console.login("oper", PASSWORD)
    console.visit("policies?name=rb&tenant=default", "#policy-history")
    console.wait_text("#policy-diff .del", "/bin/one")     # v1 -> v2 by default
    console.wait_text("#policy-diff .add", "/bin/two")
    console.css('#policy-history button[data-version="1"]').click()
    console.wait_text("#policy-title", "v3")
    console.screenshot("policy-rolled-back")
    current = admin("GET", "/api/v1/policies/rb")
    assert current["version"] == 3
    assert current["document"]["spec"]["exec"]["deny"] == ["/bin/one"]
    for agent in console_env.agents:
        wait_for(lambda a=agent: a.versions().get("rb") == 3, timeout=30,
                 what=f"agent {agent.agent_id} to hold rb v3")


# Roles in the console = roles in the API: for every role, the pages in the navigation
# and the controls that change something are exactly those whose endpoints `ACCESS`
# (controlplane/server/rest.py, what the server enforces) grants that role.
# page -> (its data endpoint, or None: every role; the ready element; {control: endpoint})
ROLE_PAGES: dict[str, tuple[tuple[str, str] | None, str, dict[str, tuple[str, str]]]] = {
    "overview": (("GET", "/api/v1/overview"), "#overview-agents", {}),
    "agents?id={agent}": (("GET", "/api/v1/agents"), "#agent-detail", {
        "#agent-labels-save": ("PUT", "/api/v1/agents/{agent_id}/labels"),
        "#agent-revoke": ("POST", "/api/v1/agents/{agent_id}/revoke")}),
    "policies": (("GET", "/api/v1/policies"), 'tr[data-policy="web"]', {
        "#policy-new": ("POST", "/api/v1/policies")}),
    "policies?name=web&tenant=default": (("GET", "/api/v1/policies/{name}/history"),
                                         "#policy-history table", {
        "#policy-editor": ("POST", "/api/v1/policies"),
        "#policy-delete": ("DELETE", "/api/v1/policies/{name}")}),
    "events": (("GET", "/api/v1/events"), "#events-list table", {}),
    "alerts": (("GET", "/api/v1/events"), "#events-list table", {}),
    "images": (("GET", "/api/v1/images"), "#image-list", {}),
    "registries": (("GET", "/api/v1/scan-registries"), "#registries table", {
        "#registry-form": ("POST", "/api/v1/scan-registries"),
        "#img-add": ("POST", "/api/v1/scan-images")}),
    "audit": (("GET", "/api/v1/audit"), "#audit-entries table", {}),
    "users": (None, "#password-form", {"#user-form": ("POST", "/api/v1/users")}),
    "tokens": (("GET", "/api/v1/tokens"), "#tokens table", {
        "#token-form": ("POST", "/api/v1/tokens")}),
    "tenants": (("GET", "/api/v1/tenants"), "#tenants table", {
        "#tenant-form": ("POST", "/api/v1/tenants"),
        "#distribute-form": ("POST", "/api/v1/policies/distribute")}),
}


@pytest.mark.parametrize("role", ["admin", "operator", "auditor", "viewer"])
def test_each_role_sees_the_pages_and_controls_its_api_access_allows(
        console: Console, console_env: ConsoleEnv, role: str) -> None:
    from moray.controlplane.server.rest import ACCESS

    def allowed(endpoint: tuple[str, str] | None) -> bool:
        return endpoint is None or role in ACCESS[endpoint]

    user = {"admin": "admin", "operator": "oper", "viewer": "view"}.get(role, "audi")
    if user == "audi" and "audi" not in console_env.passwords:
        console_env.admin("POST", "/api/v1/users", expect=201, json={
            "name": "audi", "password": PASSWORD, "role": "auditor", "tenant": None})
        console_env.passwords["audi"] = PASSWORD
    console.login(user, console_env.passwords[user])
    nav = {a.get_attribute("id").removeprefix("nav-") for a in console.all("nav a[id]")}
    pages = {p.split("?")[0] for p, (read, _, _) in ROLE_PAGES.items() if allowed(read)}
    assert nav == pages
    for page, (read, ready, controls) in ROLE_PAGES.items():
        if not allowed(read):
            continue
        console.visit(page.format(agent=console_env.agents[0].agent_id), ready)
        shown = {css for css in controls if console.all(css)}
        assert shown == {css for css, endpoint in controls.items() if allowed(endpoint)}, page


def test_hostile_agent_hostname_and_labels_render_as_text(
        console: Console, console_env: ConsoleEnv, tmp_path: Path) -> None:
    """An enrolling agent names its host and adds labels: markup there is shown as text on
    the agents page and in a policy's acknowledgements, and nothing of it runs."""
    from moray.agent.controlplane.identity import enroll

    server = console_env.server
    hostile = '<img src=x onerror="window.__moray_xss=3">'
    identity = enroll(server.enroll_target, console_env.admin.token({"env": "prod"}),
                      server.ca_pem, tmp_path / "hostile", hostname=hostile,
                      labels={"note": "<script>window.__moray_xss=4</script>"})
    agent = console_env.fleet.add(server.grpc_target, identity)
    try:
        wait_for(lambda: agent.connected, timeout=20, what="the hostile agent's stream")
        console.login("view", PASSWORD)
        console.visit(f"agents?id={agent.agent_id}", "#agent-detail")
        row = console.css(f'#agents-list tr[data-agent="{agent.agent_id}"]')
        assert hostile in row.text and "note=<script>window.__moray_xss=4</script>" in row.text
        assert hostile in console.css("#agent-detail h2").text
        console.visit("policies?name=web&tenant=default",
                      f'#policy-acks tr[data-agent="{agent.agent_id}"]')
        acked = console.css(f'#policy-acks tr[data-agent="{agent.agent_id}"]')
        assert hostile in acked.text and acked.get_attribute("data-selected") == "1"
        console.screenshot("hostile-agent")
        assert console.driver.execute_script("return window.__moray_xss === undefined")
        assert not console.all("#page img") and not console.all("#page script")
    finally:
        console_env.fleet.call(agent.close())


def test_a_second_tenants_user_sees_none_of_the_first_tenants_agents_policies_events(
        console: Console, console_env: ConsoleEnv) -> None:
    """A viewer of tenant violet (its own name: test_console_pages creates blue and green
    from the tenants page): the overview, agents, policies, events and alerts pages
    show none of the default tenant's agents, policies or events; an event's detail asked
    for by its seq is not found (its data never reaches the page)."""
    admin = console_env.admin
    assert admin.status("POST", "/api/v1/tenants", json={"name": "violet"}) in (201, 409)
    if "violet-eve" not in console_env.passwords:
        admin("POST", "/api/v1/users", expect=201, json={
            "name": "violet-eve", "password": PASSWORD, "role": "viewer", "tenant": "violet"})
        console_env.passwords["violet-eve"] = PASSWORD
    console.login("violet-eve", PASSWORD)
    console.visit("overview", "#overview-agents")
    for stat in ("#stat-online", "#stat-offline", "#stat-alerts", "#stat-blocks"):
        assert console.css(f"{stat} .stat-value").text == "0", stat
    console.visit("agents", "#agents-list table")
    assert not console.all("#agents-list tr[data-agent]")
    assert "0 of 0 agents" in console.css("#agents-list").text
    console.visit("policies", "#page-policies table")
    assert not console.all('tr[data-policy="web"], tr[data-policy="rb"]')
    for page in ("events", "alerts"):
        console.visit(page, "#events-list table")
        console.wait_text("#events-list", "no events match")
    seq = console_env.seqs["xss"]
    console.visit(f"alerts?seq={seq}", "#event-detail #event-missing")
    console.screenshot("violet-sees-nothing")
    shown, source = console.css("body").text, console.driver.page_source
    for value in (XSS_CONTAINER, "web-1", "Shell in container", "node-a"):
        assert value not in shown and value not in source
    assert console_env.admin("GET", f"/api/v1/events/{seq}")["event"]["seq"] == seq
