"""The dashboard's single sign-on (issue 8): OpenID Connect authorization
code with PKCE against the real `oidc-provider` of the identity tests, and
forged ID tokens from a provider the test controls.

- In Debian's chromium: "Log in with SSO", the provider's own login form and
  consent page, back to the dashboard with a session (an admin); a user
  without the admin role comes back refused, with no session. Screenshots
  land under tests/e2e/artifacts/dashboard/.
- Over HTTP against the real provider: a wrong `state`, a callback without
  the pre-login cookie, a replayed callback and a replayed code are refused;
  the request aibox sends to the token endpoint carries the PKCE verifier of
  the S256 challenge it sent.
- With a provider the test plays (discovery, JWKS and token endpoint of a
  recording server, ID tokens signed with keys the test holds): an ID token
  for another audience, issued to another client, with a wrong or missing
  nonce, expired, of another signer, or of a non-admin user is refused, and
  aibox's log names the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.parse
from typing import Any

import httpx
import pytest

from conftest import Cluster, dead_port
from identity_kit import Client, OidcProvider, RecordingServer, SigningKey, user_claims
from test_dashboard import _DASH_LINE, browser, shots  # noqa: F401 (fixtures)
from test_identity import KEY_ENV, gateway_config

SECRET_ENV = "DASHBOARD_OIDC_CLIENT_SECRET"
USERS = {
    "alice": user_claims("acme", "alice", ["admin"]),
    "bob": user_claims("acme", "bob", ["ai-user"]),
}


class SsoDash:
    def __init__(self, gw, url: str, redirect: str, idp: Any):
        self.gw = gw
        self.url = url
        self.redirect = redirect
        self.idp = idp

    def client(self) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=15, follow_redirects=False)
        self.gw._cluster._closers.append(c.close)
        return c


def sso_dashboard(cluster: Cluster, auth: dict[str, Any], client_id: str, secret: str, port: int, fake=None) -> SsoDash:
    fake = fake or cluster.fake_upstream()
    redirect = f"http://127.0.0.1:{port}/oidc/callback"
    cfg = gateway_config(fake, auth)
    cfg["dashboard"] = {
        "enabled": True,
        "listen": f"127.0.0.1:{port}",
        "oidc": {"client_id": client_id, "client_secret_env": SECRET_ENV, "redirect_url": redirect},
    }
    gw = cluster.aibox(cfg, env={**KEY_ENV, SECRET_ENV: secret})
    addr = gw.proc.wait_for(_DASH_LINE).group(1)
    return SsoDash(gw, f"http://{addr}", redirect, None)


def real_provider(cluster: Cluster) -> SsoDash:
    port = dead_port()
    redirect = f"http://127.0.0.1:{port}/oidc/callback"
    client = Client("dashboard", {}, redirect_uris=[redirect])
    idp = OidcProvider(cluster, [client], users=USERS)
    d = sso_dashboard(cluster, idp.auth_config(), "dashboard", client.client_secret, port)
    d.idp = idp
    return d


def start(c: httpx.Client) -> tuple[str, dict[str, str]]:
    """GET /oidc/login: the authorization URL and its query."""
    r = c.get("/oidc/login")
    assert r.status_code == 303, r.text
    loc = r.headers["location"]
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))
    return loc, q


def provider_login(authorize_url: str, user: str, redirect: str) -> str:
    """Drives the provider's development login and consent forms over HTTP;
    returns the callback URL the provider redirects to (not followed)."""
    with httpx.Client(timeout=15, follow_redirects=False) as p:
        url, method, data = authorize_url, "GET", None
        for _ in range(12):
            r = p.request(method, url, data=data)
            if r.is_redirect:
                url = urllib.parse.urljoin(url, r.headers["location"])
                method, data = "GET", None
                if url.startswith(redirect):
                    return url
                continue
            assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
            action = re.search(r'<form[^>]*action="([^"]+)"', r.text).group(1)
            prompt = re.search(r'name="prompt" value="(\w+)"', r.text).group(1)
            data = {"prompt": prompt}
            if prompt == "login":
                data.update(login=user, password="any password")
            url, method = urllib.parse.urljoin(url, action), "POST"
    raise AssertionError("the provider never redirected back")


def sso_error(r: httpx.Response) -> str:
    assert r.status_code == 303, r.text
    loc = r.headers["location"]
    m = re.fullmatch(r"/\?sso_error=(\w+)", loc)
    assert m, loc
    assert not any("aibox_session" in v for v in r.headers.get_list("set-cookie"))
    return m.group(1)


def path_of(url: str, **query: str) -> str:
    """The path and query of `url`, with `query` replacing parameters."""
    u = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(u.query))
    q.update(query)
    return u.path + "?" + urllib.parse.urlencode(q)


def test_issue8_sso_login_in_the_browser_admin_in_and_non_admin_refused(cluster, browser, shots):  # noqa: F811
    d = real_provider(cluster)
    page = browser.new_page()
    page.goto(d.url + "/")
    page.wait_for_selector("#sso-login", state="visible")
    shots(page, "sso-login-page")
    page.click("#sso-login")
    # The provider's own login form, then its consent page.
    page.wait_for_selector("input[name=login]")
    assert page.url.startswith(d.idp.issuer)
    page.fill("input[name=login]", "alice")
    page.fill("input[name=password]", "any password")
    shots(page, "sso-provider-login")
    page.click("button[type=submit]")
    page.wait_for_selector("button:text('Continue')")
    page.click("button:text('Continue')")
    page.wait_for_selector("#nav", state="visible", timeout=15_000)
    assert page.url == d.url + "/"
    shots(page, "sso-logged-in")
    s = page.evaluate("fetch('/api/session').then(r => r.json())")
    assert s["method"] == "oidc" and s["user"] == "acme/alice" and s["csrf"]
    cookie = next(c for c in browser.cookies() if c["name"] == "aibox_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # The pre-login cookie is gone once used.
    assert not [c for c in browser.cookies() if c["name"] == "aibox_sso"]
    # A session like any other: a CSRF-protected action works.
    r = page.evaluate(
        "fetch('/api/audit/_aibox/verify', {method: 'POST', headers: {'X-CSRF-Token': '%s'}}).then(r => r.status)" % s["csrf"]
    )
    assert r == 200
    # The login is in the system tenant's log, with who logged in.
    rows = page.evaluate("fetch('/api/audit/_aibox').then(r => r.json())")["rows"]
    logins = [row["event"] for row in rows if row["event"]["type"] == "ops_action" and row["event"]["action"] == "dashboard_login"]
    assert [a["target"] for a in logins] == ["method=oidc user=acme/alice"], logins

    # Bob has no admin role: the provider logs him in, aibox refuses him.
    page.click("#logout")
    page.wait_for_selector("#sso-login", state="visible")
    # SSO only: no secret form to fill in.
    assert page.is_hidden("#login-form")
    browser.clear_cookies()
    page.goto(d.url + "/")
    page.click("#sso-login")
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", "bob")
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_selector("button:text('Continue')")
    page.click("button:text('Continue')")
    page.wait_for_selector("#login-error:text('lacks the admin role')", timeout=15_000)
    assert page.is_hidden("#nav")
    shots(page, "sso-non-admin-refused")
    assert not [c for c in browser.cookies() if "aibox_session" in c["name"]]
    assert httpx.get(d.url + "/api/session").status_code == 401


def test_issue8_sso_state_cookie_and_code_replay_are_refused(cluster):
    d = real_provider(cluster)

    # A wrong state: refused, and the pending login is spent.
    c = d.client()
    loc, q = start(c)
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["client_id"] == "dashboard" and q["redirect_uri"] == d.redirect and "openid" in q["scope"].split()
    pre = c.cookies["aibox_sso"]
    back = provider_login(loc, "alice", d.redirect)
    bq = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))
    assert bq["state"] == q["state"]
    assert sso_error(c.get(path_of(back, state="forged"))) == "state_mismatch"
    # Even the right state no longer works: one callback per login.
    c.cookies.set("aibox_sso", pre)
    assert sso_error(c.get(path_of(back))) == "no_login_in_progress"

    # A callback without the pre-login cookie (login CSRF: an attacker's
    # code and state sent to the victim's browser) is refused.
    c2 = d.client()
    loc, q = start(c2)
    back = provider_login(loc, "alice", d.redirect)
    assert sso_error(d.client().get(path_of(back))) == "no_login_in_progress"

    # A good login; then the same callback again (replayed, cookie and all).
    c3 = d.client()
    loc, q = start(c3)
    pre = c3.cookies["aibox_sso"]
    back = provider_login(loc, "alice", d.redirect)
    ok = c3.get(path_of(back))
    assert ok.status_code == 303 and ok.headers["location"] == "/", ok.text
    assert c3.get("/api/session").json()["user"] == "acme/alice"
    replay = d.client()
    replay.cookies.set("aibox_sso", pre)
    assert sso_error(replay.get(path_of(back))) == "no_login_in_progress"

    # The used code with a fresh login's state and cookie: the provider
    # refuses to redeem it twice (and its PKCE verifier is not this one's).
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back).query))["code"]
    c4 = d.client()
    _, q4 = start(c4)
    r = c4.get("/oidc/callback", params={"code": code, "state": q4["state"]})
    assert sso_error(r) == "code_exchange_failed"
    assert "invalid_grant" in d.gw.stderr()
    assert d.idp.clients["dashboard"].client_secret not in d.gw.stderr()

    # Bob is refused over HTTP too, with no session.
    c5 = d.client()
    loc, _ = start(c5)
    back = provider_login(loc, "bob", d.redirect)
    r = c5.get(path_of(back))
    assert sso_error(r) == "not_admin"
    assert c5.get("/api/session").status_code == 401


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_issue8_forged_id_tokens_are_refused(cluster):
    fake_idp = RecordingServer()
    cluster._closers.append(fake_idp.close)
    key = SigningKey.rsa("fk1")
    other = SigningKey.rsa("fk1")  # same kid, a key the provider never published
    iss = fake_idp.url
    fake_idp.files["/.well-known/openid-configuration"] = (200, "application/json", json.dumps({
        "issuer": iss, "authorization_endpoint": iss + "/authorize", "token_endpoint": iss + "/token",
        "jwks_uri": iss + "/jwks",
    }).encode())
    fake_idp.files["/jwks"] = (200, "application/json", json.dumps({"keys": [key.public_jwk()]}).encode())
    auth = {"enabled": True, "issuer": iss, "audiences": ["aibox"]}
    port = dead_port()
    d = sso_dashboard(cluster, auth, "dash", "dash-secret", port)

    def claims(n: str, /, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        c = {"iss": iss, "sub": "u1", "aud": "dash", "iat": now, "exp": now + 300, "nonce": n,
             **USERS["alice"]}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    cases = [
        ("good", lambda n: key.sign(claims(n), {"typ": "JWT"}), None, None),
        ("another audience", lambda n: key.sign(claims(n, aud="aibox"), {"typ": "JWT"}), "id_token_refused", "audience_mismatch"),
        ("issued to another client", lambda n: key.sign(claims(n, aud=["dash", "x"], azp="x"), {"typ": "JWT"}), "id_token_refused", "audience_mismatch"),
        ("wrong nonce", lambda n: key.sign(claims(n + "x"), {"typ": "JWT"}), "id_token_refused", "bad_claim"),
        ("missing nonce", lambda n: key.sign(claims(n, nonce=None), {"typ": "JWT"}), "id_token_refused", "missing_claim"),
        ("expired", lambda n: key.sign(claims(n, exp=int(time.time()) - 120), {"typ": "JWT"}), "id_token_refused", "expired"),
        ("another signer", lambda n: other.sign(claims(n), {"typ": "JWT"}), "id_token_refused", "bad_signature"),
        ("another issuer", lambda n: key.sign(claims(n, iss="http://evil.example"), {"typ": "JWT"}), "id_token_refused", "issuer_mismatch"),
        ("non-admin", lambda n: key.sign(claims(n, **USERS["bob"]), {"typ": "JWT"}), "not_admin", None),
    ]
    for name, make, want, reason in cases:
        c = d.client()
        _, q = start(c)
        fake_idp.files["/token"] = (200, "application/json", json.dumps(
            {"access_token": "at", "token_type": "Bearer", "id_token": make(q["nonce"])}).encode())
        before = len(fake_idp.requests)
        r = c.get("/oidc/callback", params={"code": "code-" + name.replace(" ", "-"), "state": q["state"]})
        if want is None:
            assert r.status_code == 303 and r.headers["location"] == "/", (name, r.text)
            assert c.get("/api/session").json()["user"] == "acme/alice"
        else:
            assert sso_error(r) == want, name
            assert c.get("/api/session").status_code == 401, name
            if reason:
                assert re.search(rf'"reason":"{reason}"', d.gw.stderr()), (name, d.gw.stderr()[-2000:])
        # The code exchange aibox made: PKCE verifier of the S256 challenge,
        # the registered redirect, the client's own credentials.
        tok = [x for x in fake_idp.requests[before:] if x.path == "/token"]
        assert len(tok) == 1, name
        form = dict(urllib.parse.parse_qsl(tok[0].body.decode()))
        assert form["grant_type"] == "authorization_code" and form["code"] == "code-" + name.replace(" ", "-")
        assert form["redirect_uri"] == d.redirect
        assert _b64(hashlib.sha256(form["code_verifier"].encode()).digest()) == q["code_challenge"]
        assert tok[0].one("authorization") == "Basic " + base64.b64encode(b"dash:dash-secret").decode()
        assert "client_secret" not in form

    # RFC 9207: an answer naming another issuer (mix-up) is refused before
    # any code is redeemed; the right one is accepted.
    c = d.client()
    _, q = start(c)
    before = len(fake_idp.requests)
    r = c.get("/oidc/callback", params={"code": "mixup", "state": q["state"], "iss": "http://evil.example"})
    assert sso_error(r) == "issuer_mismatch"
    assert not [x for x in fake_idp.requests[before:] if x.path == "/token"]
    c = d.client()
    _, q = start(c)
    fake_idp.files["/token"] = (200, "application/json", json.dumps(
        {"access_token": "at", "token_type": "Bearer", "id_token": key.sign(claims(q["nonce"]), {"typ": "JWT"})}).encode())
    r = c.get("/oidc/callback", params={"code": "ok", "state": q["state"], "iss": iss})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
