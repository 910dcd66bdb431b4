"""The dashboard every node serves at /dashboard: its static files and headers, the
overview it polls (every member's status over the peer links, an unreachable member
marked), and the page itself in a real browser: Debian's chromium, headless, driven by
playwright, on a live 3-node cluster; kill -9 the leader and the page shows the new one.

The browser test needs ``chromium`` (``apt-get install chromium``; .ci/run installs it) and
the ``playwright`` package (the test extra); it never downloads a browser of its own.
"""

from __future__ import annotations

import os

import pytest

from paxoslog_integration import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def test_dashboard_files_are_served_with_safe_headers(make_cluster):
    """/dashboard, /dashboard/ and its script and style are served with their types, no
    caching and a self-only content policy; other paths under it are 404."""
    c = make_cluster("multipaxos")
    page = c.request(2, "GET", "/dashboard")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'src="/dashboard/app.js"' in page.body and b"http" not in page.body.split(
        b"<footer>")[0].replace(b"http-equiv", b"")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-cache"
    assert c.request(2, "GET", "/dashboard/").status == 200
    script = c.request(2, "GET", "/dashboard/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert b"PollingSource" in script.body
    assert c.request(2, "GET", "/dashboard/app.css").headers["Content-Type"].startswith(
        "text/css")
    assert c.request(2, "GET", "/dashboard/../api.py").status == 404
    assert c.request(2, "GET", "/dashboard/nope.js").status == 404
    assert c.request(2, "POST", "/dashboard", {}).status == 405


def test_overview_lists_every_member_and_marks_the_unreachable(make_cluster, protocol):
    """Any node answers the overview with every member's own status, metrics and events;
    a killed member is listed unreachable with the reason."""
    c = make_cluster(protocol)
    for i in range(10):
        c.write(f"o{i}", i)

    # Writes commit on a majority, so node 3 may still be dialling one member: the overview
    # says so ("no peer connection") until the link is up.
    def all_reachable():
        body = c.request(3, "GET", "/api/v1/cluster/overview").body
        assert body["served_by"] == 3 and [n["id"] for n in body["nodes"]] == [1, 2, 3]
        return body if all(n["reachable"] for n in body["nodes"]) else None
    body = wait_for(all_reachable, 10, what="every member reachable from node 3")
    assert all(n["status"]["node_id"] == n["id"] for n in body["nodes"])
    leader = c.wait_leader()
    metrics = body["nodes"][leader - 1]["status"]["metrics"]
    assert metrics["write_latency"]["count"] >= 0 and len(metrics["fsync"]["counts"]) == \
        len(metrics["fsync"]["buckets"]) + 1
    events = [e for n in body["nodes"] for e in n["status"]["events"]]
    assert any(e["kind"] == "leader" and e["leader"] == leader for e in events)
    victim = next(n for n in c.ids if n not in (3, leader))
    c.kill(victim)

    def marked():
        nodes = c.request(3, "GET", "/api/v1/cluster/overview").body["nodes"]
        entry = next(n for n in nodes if n["id"] == victim)
        return entry if not entry["reachable"] else None
    entry = wait_for(marked, 10, what="the killed node to be marked unreachable")
    assert entry["status"] is None and entry["error"]


def _no_browser(reason: str) -> None:
    """Skip locally; fail where the browser test must run (.ci/run sets
    PAXOSLOG_REQUIRE_BROWSER=1)."""
    if os.environ.get("PAXOSLOG_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


def _launch(playwright):
    if not os.path.exists(CHROMIUM):
        _no_browser(f"no browser: {CHROMIUM} is not installed (apt-get install chromium; "
                    ".ci/run installs it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                      headless=True)


def _sync_api():
    try:
        from playwright import sync_api
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[test]')")
    return sync_api


def _open(browser, c, node: int, errors: list, fragment: str = "", sockets=None):
    """A page on ``node``'s dashboard (https when the cluster has TLS: the browser is told
    to accept the cluster CA's certificates, page and WebSocket alike); page errors go to
    ``errors``, the page's WebSockets to ``sockets``."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000},
                            ignore_https_errors=c.tls)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if sockets is not None:
        page.on("websocket", lambda ws: sockets.append(ws))
    page.goto(f"{c.url(node)}/dashboard{fragment}")
    return page


def _shows_a_write_live(page, c) -> None:
    """The page's tail is open (the header says WebSocket) and a new write's slot appears
    through a refresh that a stream message started."""
    page.wait_for_function(
        "() => document.querySelector('#connection').dataset.stream === 'websocket'",
        timeout=15_000)
    _, body = c.write("live", 1)
    page.wait_for_function(
        "i => document.querySelector(`.slot[data-index='${i}']`) !== null "
        "&& window.paxoslogDashboard.source.liveRefreshes > 0",
        arg=body["index"], timeout=15_000)
    assert page.evaluate("window.paxoslogDashboard.source.streamMessages") >= 1


def test_dashboard_in_chromium_follows_a_leader_change(make_cluster, protocol, tmp_path):
    """Headless chromium loads a follower's dashboard: it shows three nodes and the
    leader, log slots, load figures; it follows the node's log over the WebSocket endpoint
    (a new write's slot appears through a refresh the tail started); after kill -9 of the
    leader it shows the new leader and the old one unreachable.  Screenshots go to the
    test's temp dir."""
    sync_api = _sync_api()
    c = make_cluster(protocol)
    for i in range(20):
        c.write(f"d{i}", i)
    leader = c.wait_leader()
    watcher = next(n for n in c.ids if n != leader)
    with sync_api.sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            errors: list[str] = []
            page = _open(browser, c, watcher, errors)
            leader_badge = page.locator("#leader")
            page.wait_for_function(
                "expected => document.querySelector('#leader').dataset.leader === expected",
                arg=str(leader), timeout=15_000)
            assert page.locator(".node").count() == 3
            assert page.locator(f'.node[data-node-id="{leader}"]').get_attribute(
                "data-role") == "leader"
            assert page.locator("#served-by").inner_text() == str(watcher)
            assert page.locator("#protocol").inner_text() == protocol
            assert page.locator(".slot").count() >= 20
            _shows_a_write_live(page, c)
            for i in range(20, 40):                  # load for the charts
                c.write(f"d{i}", i)
            page.wait_for_function(
                "() => document.querySelector('#writes-now').textContent !== '-'",
                timeout=15_000)
            assert page.locator("#events li[data-kind='leader']").count() >= 1
            page.screenshot(path=str(tmp_path / "dashboard-before.png"), full_page=True)

            c.kill(leader)
            new_leader = c.wait_leader(timeout=20)
            assert new_leader != leader
            page.wait_for_function(
                "expected => document.querySelector('#leader').dataset.leader === expected",
                arg=str(new_leader), timeout=20_000)
            assert leader_badge.inner_text() == f"node {new_leader}"
            page.wait_for_function(
                "old => document.querySelector(`.node[data-node-id='${old}']`)"
                ".dataset.reachable === 'false'", arg=str(leader), timeout=15_000)
            page.wait_for_function(
                "n => [...document.querySelectorAll('#events li[data-kind=leader]')]"
                ".some(li => li.textContent.includes(`node ${n} leads`))",
                arg=new_leader, timeout=15_000)
            page.screenshot(path=str(tmp_path / "dashboard-after.png"), full_page=True)
            assert (tmp_path / "dashboard-after.png").stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()


def test_dashboard_in_chromium_is_live_over_the_websocket_under_tokens(make_cluster, tmp_path):
    """Where tokens are required, the page opened with #token=<admin token> sends the
    token on its WebSocket as the paxoslog.bearer.<base64url> subprotocol (a browser sets
    no headers there): the tail opens, the header says "live (WebSocket)", a new write
    shows up through a refresh the tail started; the node chose the JSON subprotocol, the
    token is neither in the socket's URL nor in the node's log."""
    sync_api = _sync_api()
    c = make_cluster("raft", auth=True)
    for i in range(5):
        c.write(f"t{i}", i)
    token = c.tokens["admin"]
    node = c.wait_leader()
    with sync_api.sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            errors: list[str] = []
            sockets: list = []
            page = _open(browser, c, node, errors, f"#token={token}", sockets)
            _shows_a_write_live(page, c)
            assert page.locator("#connection").inner_text() == "live (WebSocket)"
            assert page.evaluate("window.paxoslogDashboard.source.socket.protocol") == \
                "paxoslog.v1.json"
            assert page.evaluate("window.location.hash") == ""
            assert sockets and all(token not in ws.url for ws in sockets)
            page.screenshot(path=str(tmp_path / "dashboard-tokens.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    with open(c.log_path(node)) as f:
        assert token not in f.read()


def test_dashboard_in_chromium_works_with_a_read_token(make_cluster, tmp_path):
    """A wall-screen dashboard need not hold an admin token (one that can remove nodes and
    download backups): with a read token the page shows the nodes and the leader, and says
    that the log's entries (admin only: they carry client ids) are not shown.  Before, the
    refused entries failed the whole page ("HTTP 403"; found by a review)."""
    sync_api = _sync_api()
    c = make_cluster("raft", auth=True)
    c.write("r", 1)
    leader = c.wait_leader()
    with sync_api.sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            errors: list[str] = []
            page = _open(browser, c, leader, errors, f"#token={c.tokens['read']}")
            page.wait_for_function(
                "expected => document.querySelector('#leader').dataset.leader === expected",
                arg=str(leader), timeout=15_000)
            assert page.locator(".node").count() == 3
            assert "admin token" in page.locator("#log-range").inner_text()
            assert page.locator(".slot").count() == 0
            page.screenshot(path=str(tmp_path / "dashboard-read-token.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
