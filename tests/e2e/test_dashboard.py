"""The admin dashboard in a real headless browser (seed 004 §4).

Debian's chromium (/usr/bin/chromium), driven by Playwright for Python with
`executable_path` (never `playwright install`), started with the flags a
closed network needs and a fresh profile per test. Covers: a wrong password
and a wrong token are refused on the login form; a token login and a
password login both work; after a chat turn made with the `openai` SDK
through the real binary, the turn appears on the traffic and audit pages;
"Verify" reports the log verified; the receipt downloads and verifies
offline with `aibox audit receipt verify`; every page renders (a screenshot
of each is saved under tests/e2e/artifacts/, path printed); state-changing
API calls without the CSRF token, with a wrong one, or from another origin
are refused; the session cookie is HttpOnly and SameSite=Strict and not
readable by scripts; security headers are on every answer; a foreign `Host`
is refused (DNS rebinding); logout ends the session; a non-loopback
dashboard without credentials does not start.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from conftest import base_config, model

from playwright import sync_api as playwright_sync
from playwright.sync_api import expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "dash-token-" + "d" * 40
PASSWORD = "correct horse battery staple"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"
_DASH_LINE = re.compile(r"^aibox dashboard listening (\S+)$", re.M)


class Dash:
    def __init__(self, gw, url: str):
        self.gw = gw
        self.url = url


def dashboard(cluster, *, token: str | None = TOKEN, password: str | None = PASSWORD, listen="127.0.0.1:0",
              with_mcp: bool = False) -> Dash:
    up = cluster.fake_upstream("up1")
    cfg = base_config()
    cfg["upstreams"] = [up.upstream()]
    cfg["models"] = [model("chat", (up, "m1"))]
    cfg["dashboard"] = {"enabled": True, "listen": listen}
    env = {}
    if token:
        env["DASHBOARD_AUTH_TOKEN"] = token
    if password:
        env["DASHBOARD_PASSWORD"] = password
    cwd = cluster.aibox_dir()
    if with_mcp:
        from test_ops import write_registry
        write_registry(cwd)
    gw = cluster.aibox(cfg, env=env, cwd=cwd)
    addr = gw.proc.wait_for(_DASH_LINE).group(1)
    return Dash(gw, f"http://{addr}")


@pytest.fixture
def browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found; install Debian's chromium (`apt-get install -y chromium`, .ci/run does)", pytrace=False)
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def shots(request):
    d = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots in {d}")

    def take(page, name: str) -> None:
        page.screenshot(path=str(d / f"{name}.png"), full_page=True)
    return take


def login(page, url: str, method: str, secret: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#login-form", state="visible")
    page.select_option("#login-method", method)
    page.fill("#login-secret", secret)
    page.click("#login-submit")


def logged_in(page) -> None:
    page.wait_for_selector("#nav", state="visible", timeout=10_000)


@pytest.mark.parametrize(("method", "secret"), [("password", "wrong horse"), ("token", "not-the-token"), ("password", TOKEN), ("token", PASSWORD)])
def test_wrong_credentials_are_refused(cluster, browser, shots, method, secret):
    d = dashboard(cluster)
    page = browser.new_page()
    login(page, d.url, method, secret)
    expect(page.locator("#login-error")).to_contain_text("wrong token or password")
    assert page.is_hidden("#nav")
    shots(page, f"login-refused-{method}")
    # No session was opened.
    assert not [c for c in browser.cookies() if "aibox_session" in c["name"]]
    assert httpx.get(d.url + "/api/session").status_code == 401


def system_actions(d: Dash, kind: str = "ops_action") -> list[dict]:
    """The `kind` events of the `_aibox` tenant, read from the audit
    database itself (read-only)."""
    db = sqlite3.connect(f"file:{d.gw.cwd / 'data' / 'audit.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT event FROM audit_rows WHERE tenant = '_aibox' ORDER BY seq").fetchall()
    finally:
        db.close()
    events = [json.loads(r[0]) for r in rows]
    return [e for e in events if e["type"] == kind]


def test_dashboard_logins_and_logouts_are_audited_and_a_login_fails_closed(cluster):
    """Who logged in to the dashboard, and when they left, is in the system
    tenant's log; a refused login writes nothing there; and a login the audit
    log cannot take is refused with 503, no session handed out."""
    d = dashboard(cluster)
    with httpx.Client(base_url=d.url) as c:
        r = c.post("/api/login", json={"token": TOKEN})
        assert r.status_code == 200, r.text
        logins = [a for a in system_actions(d) if a["action"] == "dashboard_login"]
        assert [(a["actor"], a["target"], a["ok"]) for a in logins] == [("dashboard", "method=token", True)]

        before = system_actions(d)
        assert httpx.post(d.url + "/api/login", json={"token": "not-the-token"}).status_code == 401
        assert httpx.post(d.url + "/api/login", json={"password": "wrong horse"}).status_code == 401
        assert system_actions(d) == before, "a refused login was written to the log as an action"
        # It is recorded as a refused authentication instead (after the
        # 401, so wait for it), without the credential that was tried.
        deadline = time.monotonic() + 10
        while len(refused := system_actions(d, "auth_refused")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(e["reason"], e["route"], e["peer"]) for e in refused] == [
            ("wrong_dashboard_token", "dashboard/login", "127.0.0.1"),
            ("wrong_dashboard_password", "dashboard/login", "127.0.0.1"),
        ], refused
        assert "not-the-token" not in json.dumps(refused) and "wrong horse" not in json.dumps(refused)

        out = c.post("/api/logout", headers={"X-CSRF-Token": r.json()["csrf"], "Origin": d.url})
        assert out.status_code == 200, out.text
        assert [a["target"] for a in system_actions(d) if a["action"] == "dashboard_logout"] == ["method=token"]

    r = httpx.post(d.url + "/api/login", json={"password": PASSWORD})
    assert r.status_code == 200, r.text
    assert [a["target"] for a in system_actions(d) if a["action"] == "dashboard_login"] == ["method=token", "method=password"]

    # The audit log stops taking rows (a trigger the test adds refuses every
    # insert): the next login is refused, and its session never works.
    db = sqlite3.connect(d.gw.cwd / "data" / "audit.db")
    db.execute("CREATE TRIGGER test_audit_down BEFORE INSERT ON audit_rows BEGIN SELECT RAISE(ABORT, 'test: audit down'); END")
    db.commit()
    db.close()
    with httpx.Client(base_url=d.url) as c:
        r = c.post("/api/login", json={"token": TOKEN})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert "set-cookie" not in r.headers
        assert c.get("/api/session").status_code == 401


def test_token_login_shows_the_turn_verifies_and_downloads_its_receipt(cluster, browser, shots, tmp_path):
    d = dashboard(cluster, with_mcp=True)
    page = browser.new_page()
    login(page, d.url, "token", TOKEN)
    logged_in(page)
    shots(page, "traffic-empty")

    raw = d.gw.client().chat.completions.with_raw_response.create(model="chat", messages=[{"role": "user", "content": "hello dashboard"}])
    turn = raw.headers["x-aibox-turn"]
    assert raw.parse().choices[0].message.content == "up1: hello dashboard"

    # Live traffic: the default tenant's row for model chat appears by polling.
    row = page.locator("#traffic-table tbody tr", has=page.locator("td:text-is('chat')"))
    expect(row.locator("td").nth(0)).to_have_text("default", timeout=10_000)
    expect(row.locator("td").nth(2)).to_have_text("1")
    shots(page, "traffic")

    page.click("nav button[data-page=audit]")
    page.wait_for_selector(f"#audit-table td:text-is('{turn}')", timeout=10_000)
    types = page.eval_on_selector_all("#audit-table tbody tr", "rows => rows.map(r => r.cells[2].textContent)")
    assert "turn_end" in types and "request_received" in types
    # The prompt text is not in the log (only its hash).
    assert "hello dashboard" not in page.text_content("#audit-table")
    page.click("#audit-verify")
    expect(page.locator("#verify-result")).to_have_text(re.compile(r"^verified: \d+ rows"), timeout=15_000)
    assert page.get_attribute("#verify-result", "class") == "ok"
    shots(page, "audit-verified")

    with page.expect_download() as dl:
        page.click(f"#audit-table tr:has(td:text-is('{turn}')) a.receipt")
    receipt = tmp_path / "receipt.json"
    dl.value.save_as(receipt)
    assert json.loads(receipt.read_text())
    keys = tmp_path / "keys.json"
    keys.write_text(d.gw.http().get("/v1/audit/keys").text)
    ok = cluster.run_aibox(["audit", "receipt", "verify", str(receipt), "--keys", str(keys)])
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["turn"] == turn

    # Each page, with something it must show once loaded.
    for name, ready in [
        ("guardrail", "#gr-recent td:text-is('input')"),
        ("mcp", "#mcp-table td:text-is('tenant:acme&role:tools')"),
        ("keys", "#keys-table td:text-is('AIBOX_CAPTOKEN_KEYS')"),
        ("doctor", "#doctor-table tbody tr"),
    ]:
        page.click(f"nav button[data-page={name}]")
        page.wait_for_selector(f"#page-{name}", state="visible")
        page.wait_for_selector(ready, timeout=15_000)
        shots(page, name)
    expect(page.locator("#gr-counts")).to_contain_text("allow")
    # The MCP server with its client allow-list and tool allow/deny lists.
    mcp_row = page.locator("#mcp-table tbody tr", has=page.locator("td:text-is('local')"))
    expect(mcp_row.locator("td").nth(5)).to_have_text("echo, add")
    expect(mcp_row.locator("td").nth(6)).to_have_text("danger")

    # The verify press is an operator action in the system tenant's log.
    r = page.evaluate("fetch('/api/audit/_aibox').then(r => r.json())")
    acts = [row["event"] for row in r["rows"] if row["event"]["type"] == "ops_action"]
    assert any(a["action"] == "verify_audit_log" and a["actor"] == "dashboard" and "tenant=default" in a["target"] for a in acts)


def test_password_login_session_cookie_and_logout(cluster, browser, shots):
    d = dashboard(cluster, token=None)
    page = browser.new_page()
    resp = page.goto(d.url + "/")
    h = resp.headers
    assert "unsafe-inline" not in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff" and h["cache-control"] == "no-store"
    login(page, d.url, "password", PASSWORD)
    logged_in(page)
    shots(page, "password-login")
    cookie = next(c for c in browser.cookies() if c["name"] == "aibox_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert "aibox_session" not in page.evaluate("document.cookie")
    api = page.evaluate("fetch('/api/session').then(async r => [r.status, r.headers.get('cache-control'), await r.json()])")
    assert api[0] == 200 and api[1] == "no-store" and api[2]["method"] == "password"

    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    # The old cookie value is dead on the server, not only in the browser.
    r = httpx.get(d.url + "/api/session", cookies={"aibox_session": cookie["value"]})
    assert r.status_code == 401


#: State-changing requests made with a valid session cookie but without a
#: valid CSRF token or from another origin.
CSRF_CASES = [
    pytest.param({}, id="no-token"),
    pytest.param({"X-CSRF-Token": "forged"}, id="wrong-token"),
    pytest.param({"X-CSRF-Token": ""}, id="empty-token"),
    pytest.param({"X-CSRF-Token": "RIGHT", "Origin": "http://evil.example"}, id="cross-origin"),
    pytest.param({"X-CSRF-Token": "RIGHT", "Origin": "null"}, id="null-origin"),
]


@pytest.mark.parametrize("path", ["/api/audit/default/verify", "/api/logout"])
@pytest.mark.parametrize("headers", CSRF_CASES)
def test_csrf_is_refused(cluster, browser, path, headers):
    d = dashboard(cluster)
    page = browser.new_page()
    login(page, d.url, "token", TOKEN)
    logged_in(page)
    d.gw.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    cookie = next(c for c in browser.cookies() if c["name"] == "aibox_session")["value"]
    with httpx.Client(base_url=d.url, cookies={"aibox_session": cookie}) as c:
        csrf = c.get("/api/session").json()["csrf"]
        h = {k: (csrf if v == "RIGHT" else v) for k, v in headers.items()}
        r = c.post(path, headers=h)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "csrf_refused"
        # The session is still alive (logout did not happen) ...
        assert c.get("/api/session").status_code == 200
        # ... and with the right token from this origin, the same request works.
        ok = c.post(path, headers={"X-CSRF-Token": csrf, "Origin": d.url})
        assert ok.status_code == 200, ok.text


def test_login_is_refused_cross_origin_and_as_a_form(cluster):
    d = dashboard(cluster)
    r = httpx.post(d.url + "/api/login", json={"token": TOKEN}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = httpx.post(d.url + "/api/login", data={"token": TOKEN})
    assert r.status_code == 400 and "set-cookie" not in r.headers
    # HTTP Basic with the password works programmatically.
    r = httpx.post(d.url + "/api/login", auth=("admin", PASSWORD))
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
    assert httpx.post(d.url + "/api/login", auth=("admin", "nope")).status_code == 401


def test_bearer_api_access_and_foreign_host(cluster):
    d = dashboard(cluster)
    good = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(d.url + "/api/keys", headers=good)
    assert r.status_code == 200
    body = r.text
    assert "AIBOX_PRINCIPAL_KEYS" in body and "fingerprint" in body
    dev = (d.gw.cwd / "data" / "dev-keys.env").read_text()
    for line in dev.splitlines():
        if ":" in line:
            assert line.split(":", 1)[1].strip().strip('"') not in body
    assert httpx.get(d.url + "/api/keys", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(d.url + "/api/keys").status_code == 401
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1.
    r = httpx.get(d.url + "/api/keys", headers={**good, "Host": "evil.example"})
    assert r.status_code == 421
    # The dashboard is not on the main or the ops listener.
    assert d.gw.http().get("/api/keys", headers=good).status_code == 404
    assert d.gw.ops().get("/api/keys", headers=good).status_code == 404


def test_non_loopback_dashboard_needs_a_credential(cluster):
    cfg = base_config()
    cfg["dashboard"] = {"enabled": True, "listen": "0.0.0.0:0"}
    _, err = cluster.aibox_must_refuse_to_start(cfg)
    assert "dashboard.listen" in err and "DASHBOARD_AUTH_TOKEN" in err
    gw = cluster.aibox(cfg, env={"DASHBOARD_AUTH_TOKEN": TOKEN})
    addr = gw.proc.wait_for(_DASH_LINE).group(1)
    assert addr.startswith("0.0.0.0:")


def test_a_short_plain_password_stops_start_up(cluster):
    cfg = base_config()
    cfg["dashboard"] = {"enabled": True, "listen": "127.0.0.1:0"}
    _, err = cluster.aibox_must_refuse_to_start(cfg, env={"DASHBOARD_PASSWORD": "short-pw"})
    assert "DASHBOARD_PASSWORD" in err and "at least 12" in err
    assert "short-pw" not in err


def test_sessions_survive_a_plain_reload_and_end_when_the_token_rotates(cluster):
    import signal
    import time

    cfg = base_config()
    cfg["dashboard"] = {"enabled": True, "listen": "127.0.0.1:0"}
    cwd = cluster.aibox_dir()
    (cwd / ".env").write_text(f"DASHBOARD_AUTH_TOKEN={TOKEN}\nOPS_CONTROLLER_TOKEN={TOKEN}-ops\n")
    gw = cluster.aibox(cfg, cwd=cwd)
    url = "http://" + gw.proc.wait_for(_DASH_LINE).group(1)
    login = httpx.post(url + "/api/login", json={"token": TOKEN})
    cookie = login.cookies["aibox_session"]

    def alive() -> bool:
        return httpx.get(url + "/api/session", cookies={"aibox_session": cookie}).status_code == 200

    def reloads() -> int:
        events = [r["event"] for r in httpx.get(url + "/api/audit/_aibox", headers={"Authorization": f"Bearer {current}"}).json()["rows"]]
        return len([e for e in events if e["type"] == "ops_action" and e["action"] == "reload_keys"])

    current = TOKEN
    gw.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while reloads() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert alive(), "an unchanged credential must keep the sessions"

    new = "rotated-" + "f" * 40
    (cwd / ".env").write_text(f"DASHBOARD_AUTH_TOKEN={new}\nOPS_CONTROLLER_TOKEN={TOKEN}-ops\n")
    gw.proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while alive():
        assert time.monotonic() < deadline, "the rotation did not end the session"
        time.sleep(0.1)
    assert httpx.post(url + "/api/login", json={"token": TOKEN}).status_code == 401
    assert httpx.post(url + "/api/login", json={"token": new}).status_code == 200


def test_issue8_the_audit_page_pages_by_sequence_number(cluster, browser, shots):
    d = dashboard(cluster)
    client = d.gw.client()
    for i in range(60):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"turn {i}"}])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    first = httpx.get(d.url + "/api/audit/default", headers=bearer).json()
    total = first["total"]
    assert total >= 250, total

    page = browser.new_page()
    login(page, d.url, "token", TOKEN)
    logged_in(page)
    page.click("nav button[data-page=audit]")
    page.wait_for_selector(f"#audit-table td:text-is('{total}')", timeout=10_000)
    assert page.is_disabled("#audit-newest")
    shots(page, "audit-page-newest")
    seen: list[int] = []
    for n in range(10):
        seqs = page.eval_on_selector_all("#audit-table tbody tr", "rows => rows.map(r => Number(r.cells[0].textContent))")
        assert seqs == sorted(seqs, reverse=True) and len(seqs) <= 100
        if seen:
            assert seqs[0] == seen[-1] - 1, "a page must start right below the previous one"
        seen += seqs
        expect(page.locator("#audit-range")).to_have_text(f"seq {seqs[-1]} to {seqs[0]} of {total}")
        if page.is_disabled("#audit-older"):
            break
        page.click("#audit-older")
        page.wait_for_selector(f"#audit-table td:text-is('{seqs[-1] - 1}')", timeout=10_000)
        if n == 0:
            assert not page.is_disabled("#audit-newest")
            shots(page, "audit-page-older")
    # Every row exactly once, newest to the first.
    assert seen == list(range(total, 0, -1))
    # Verify stays a button, and checks the whole log, not the page.
    page.click("#audit-verify")
    expect(page.locator("#verify-result")).to_have_text(re.compile(rf"^verified: {total} rows"), timeout=15_000)
    page.click("#audit-newest")
    page.wait_for_selector(f"#audit-table td:text-is('{total}')", timeout=10_000)

    # The API: page size, `before`, the last page, a kind filter.
    r = httpx.get(d.url + "/api/audit/default", params={"before": 11, "limit": 7}, headers=bearer).json()
    assert [x["seq"] for x in r["rows"]] == list(range(10, 3, -1)) and r["older"] == 4
    r = httpx.get(d.url + "/api/audit/default", params={"before": 4, "limit": 7}, headers=bearer).json()
    assert [x["seq"] for x in r["rows"]] == [3, 2, 1] and r["older"] is None
    r = httpx.get(d.url + "/api/audit/default", params={"kind": "turn_end", "limit": 500}, headers=bearer).json()
    assert len(r["rows"]) == 60 and {x["event"]["type"] for x in r["rows"]} == {"turn_end"}
    r = httpx.get(d.url + "/api/audit/default", params={"limit": 100000}, headers=bearer).json()
    assert len(r["rows"]) == min(500, total)
