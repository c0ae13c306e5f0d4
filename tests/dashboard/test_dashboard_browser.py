"""The dashboard in headless Chromium (Playwright driving Debian's chromium).

Each page is loaded against the live coordinator of ``board`` with a running
job (the running job's page first, while it runs); screenshots go to
tests/artifacts/dashboard/ (ignored by git).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page

from tests.dashboard.conftest import METRICS_EVERY, ROUNDS, Board
from tests.e2e.conftest import LABEL, credit_rows, detente, propose, write_csv

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"


def _install_chromium() -> None:
    """Debian's chromium, installed as the README says `make test` does on a fresh machine."""
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.fail("no /usr/bin/chromium and no apt-get to install it: install Debian's chromium")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env, timeout=900)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    _install_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, board: Board) -> Iterator[Page]:
    """A fresh browser context; every request it makes is recorded in ``page.requested``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.requested = requested  # type: ignore[attr-defined]
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


def _log_in(page: Page, board: Board) -> None:
    page.goto(board.url + "login")
    page.fill("#token", board.token)
    page.click("button[type=submit]")
    page.wait_for_url(board.url)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _only_the_coordinator(page: Page, board: Board) -> None:
    origin = urlsplit(board.url).netloc
    outside = [u for u in page.requested if urlsplit(u).netloc != origin]  # type: ignore[attr-defined]
    assert outside == [], outside


def _metric_points(board: Board) -> int:
    job = board.api(f"api/jobs/{board.job_id}")
    return sum(len(s["points"]) for s in job["metrics"])


def test_a_live_metrics_job_draws_each_metric_curve_growing(
    page: Page, board: Board, approved: Board
) -> None:
    """First, while the long job runs: its terms let the enclave report the metric live."""
    _log_in(page, board)
    job = approved.wait_job(lambda j: sum(len(s["points"]) for s in j["metrics"]) >= 2)
    assert job["live_metrics"] is True
    (series,) = job["metrics"]  # eval_metric auc, on the held-out rows
    assert (series["data"], series["metric"]) == ("validation", "auc")
    rounds = [p["round"] for p in series["points"]]
    assert rounds == list(range(METRICS_EVERY, METRICS_EVERY * len(rounds) + 1, METRICS_EVERY))
    assert all(0 <= p["value"] <= 1 for p in series["points"])
    page.goto(board.url + f"jobs/{board.job_id}")
    points = page.locator("#metric-chart-1 circle.point")
    first = points.count()
    assert first >= 2
    assert "auc" in page.inner_text("#metric-1 figcaption")
    assert "validation rows" in page.inner_text("#metric-1 figcaption")
    assert "in the clear" in page.inner_text("#metrics-note")
    _shot(page, "job-metrics-first")
    if page.inner_text("#job-state") == "running":
        # Between two loads the enclave reports more evaluations: the chart has more points.
        deadline = time.monotonic() + 120
        while _metric_points(board) <= first:
            assert time.monotonic() < deadline, "no new metric point in 120 s"
            time.sleep(0.5)
        page.reload()
        assert points.count() > first
    else:  # it finished before the first load (an idle machine): the whole curve is drawn
        assert first == ROUNDS // METRICS_EVERY
    tip = points.last.locator("title").text_content() or ""
    assert re.fullmatch(r"round \d+: [0-9.e+-]+", tip), tip
    _shot(page, "job-metrics")
    _only_the_coordinator(page, board)


def test_a_running_job_charts_progress_that_advances(
    page: Page, board: Board, approved: Board
) -> None:
    _log_in(page, board)
    approved.wait_job(lambda j: j["state"] == "running" and len(j["progress"]) >= 2)
    page.goto(board.url + f"jobs/{board.job_id}")
    points = page.locator("#progress-chart circle.point")
    first = points.count()
    assert first >= 2
    assert "approved" in page.inner_text("table.approvals")
    assert "not yet" not in page.inner_text("table.approvals")
    _shot(page, "job-running")
    # The page reloads itself (meta refresh): wait for a reload that shows more points.
    deadline = time.monotonic() + 90
    while points.count() <= first and page.locator("#job-state").inner_text() == "running":
        assert time.monotonic() < deadline, "progress did not advance"
        page.wait_for_event("load", timeout=15_000)
    shown = re.search(r"Round (\d+) of", page.inner_text("#progress-text"))
    assert shown is not None
    done = int(shown.group(1))
    assert points.count() > first or done == ROUNDS
    assert "encrypted to the job's recipients" in page.inner_text("#metrics-note")
    _shot(page, "job-progress")
    _only_the_coordinator(page, board)


def test_login_refused_without_or_with_a_wrong_token(page: Page, board: Board) -> None:
    page.goto(board.url + "jobs")
    assert page.url == board.url + "login"  # redirected: no session
    page.fill("#token", "not-the-operator-token-at-all-0123456789")
    with page.expect_response(
        lambda r: r.url.endswith("/login") and r.request.method == "POST"
    ) as r:
        page.click("button[type=submit]")
    assert r.value.status == 401
    assert page.locator("#login-error").is_visible()
    _shot(page, "login-refused")
    assert page.context.cookies() == []
    assert "alice" not in page.content()
    page.goto(board.url + "api/jobs")
    assert "log in" in page.content()


def test_login_opens_an_http_only_strict_session(page: Page, board: Board) -> None:
    _log_in(page, board)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "detente_session" and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert board.token not in cookie["value"] and board.token not in page.content()
    banner = page.locator("#simulation-banner")
    assert banner.is_visible() and "SIMULATION" in banner.inner_text()
    _shot(page, "overview")
    page.click("form.logout button")
    page.wait_for_url(board.url + "login")
    page.goto(board.url + "jobs")
    assert page.url == board.url + "login"


def test_every_page_shows_the_simulation_banner_and_its_data(page: Page, board: Board) -> None:
    _log_in(page, board)
    expected = {
        "enclaves": ["SIMULATION", board.running.measured["mrenclave"], "serving", "busy"],
        "parties": ["alice", "bob", board.datasets["alice"], "300"],
        "jobs": [board.job_id, board.pending_id, board.sealed_id],
        "models": [board.sealed_id, "Remaining (coordinator's count)", "80"],
        "audit": ["Hash chain intact"],
        f"jobs/{board.pending_id}": ["not yet", "proposed"],
    }
    for path, texts in expected.items():
        page.goto(board.url + path)
        assert page.locator("#simulation-banner").is_visible(), path
        body = page.inner_text("main")
        for text in texts:
            assert text in body, (path, text)
        _shot(page, path.replace("/", "-"))
    rows = page.locator("table.approvals tbody tr")
    assert [r.inner_text().split("\t")[:2] for r in rows.all()] == [
        ["alice", "approved"],
        ["bob", "not yet"],
    ]
    _only_the_coordinator(page, board)


PAYLOADS = {
    "name": '<img src=x onerror=alert("xss-name")><script>alert("xss-name")</script>',
    "param": '" onload="alert(\'xss-param\')"><script>alert("xss-param")</script>',
    "metric": "<svg/onload=alert('xss-metric')>",
    "reason": '<img src=x onerror=alert("xss-reason")> [bold]not bold[/bold]',
}


def test_names_from_parties_and_the_enclave_are_shown_as_text(
    page: Page, board: Board, tmp_path: Path
) -> None:
    """A party's data set name, job parameter and rejection reason, and a metric name in the
    job's events, carry markup: every page shows it as text, no element is made of it,
    nothing runs."""
    home = str(board.running.coordinator_home)
    refused = detente(["coordinator", "enroll", "--home", home, "--name", "<b>x</b>"], check=False)
    assert refused.returncode != 0 and "party name must be" in refused.stderr
    mallory = board.running.party("mallory")
    detente(["party", "attest"], mallory)
    csv = write_csv(credit_rows(900, 100), tmp_path / "mallory.csv")
    upload = ["party", "upload", str(csv), "--label", LABEL, "--id", "ID"]
    detente([*upload, "--dataset-id", "mallory-ds", "--name", PAYLOADS["name"]], mallory)
    job_id = propose(
        mallory, ["mallory-ds"], "--rounds", "2", "--param", f"note={PAYLOADS['param']}"
    )
    # A data owner's rejection reason is its own text too.
    detente(["party", "reject", job_id, "--reason", PAYLOADS["reason"]], mallory)
    # An event the enclave never sent (the operator's database): a metric named with markup.
    with sqlite3.connect(board.running.db) as db:
        db.execute(
            "INSERT INTO job_events (job_id, at, kind, text) VALUES (?, ?, 'metric', ?)",
            (
                board.job_id,
                int(time.time() * 1000),
                f"round 1/{ROUNDS} validation {PAYLOADS['metric']} 0.5",
            ),
        )
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _log_in(page, board)
    for path, payload in (
        ("parties", PAYLOADS["name"]),
        (f"jobs/{job_id}", PAYLOADS["param"]),
        (f"jobs/{job_id}", PAYLOADS["reason"]),
        (f"jobs/{board.job_id}", PAYLOADS["metric"]),
    ):
        page.goto(board.url + path)
        page.wait_for_load_state("load")
        assert payload in page.inner_text("main"), path  # the literal text, shown
        assert page.locator("main script, main img, main figcaption svg").count() == 0, path
        assert page.locator("[onload], [onerror]").count() == 0, path
        _shot(page, "escaped-" + path.replace("/", "-"))
    assert dialogs == []
    assert board.api(f"api/jobs/{job_id}")["params"]["note"] == PAYLOADS["param"]


def test_a_job_the_operator_cancels_shows_why(page: Page, board: Board, approved: Board) -> None:
    """Last: `detente coordinator cancel` stops the long job (and frees the CPU)."""
    home = str(board.running.coordinator_home)
    reason = "dashboard tests are done"
    done = detente(
        ["coordinator", "cancel", board.job_id, "--home", home, "--reason", reason], check=False
    )
    # On an idle machine the job may have finished already: then cancelling is refused.
    assert done.returncode == 0 or "only an unfinished job is cancelled" in done.stderr
    approved.wait_job(lambda j: j["state"] in ("cancelled", "succeeded"), timeout=60)
    _log_in(page, board)
    page.goto(board.url + f"jobs/{board.job_id}")
    state = page.inner_text("#job-state")
    if state == "cancelled":  # unless it had already finished
        assert reason in page.inner_text("main")
    _shot(page, "job-cancelled")
