"""The web console in a real browser (Playwright driving Debian's Chromium):
sign in with the admin key, create a key and see its secret once, use it through
the API, see its requests on the dashboard with their token counts, revoke it
and see the API refuse it; a team key sees its own team only. Screenshots of
every page are kept in this test's temporary folder (printed with -s)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.console_stack import CHAT_MODEL, IDLE_MODEL, console_stack, create_key
from tests.fake_upstream import FakeUpstream, Reply
from tests.stack import ADMIN_KEY, Stack

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)"
)
expect = sync_api.expect


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(tmp_path_factory.mktemp("console-screenshots"))
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, FakeUpstream]]:
    with console_stack(Path(tmp_path_factory.mktemp("console-browser"))) as running:
        yield running


@pytest.fixture(scope="module")
def stack(stacked: tuple[Stack, FakeUpstream]) -> Stack:
    return stacked[0]


@pytest.fixture
def upstream(stacked: tuple[Stack, FakeUpstream]) -> Iterator[FakeUpstream]:
    yield stacked[1]
    stacked[1].default = Reply()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Nothing but this edge: a request anywhere else fails the test.
    outside: list[str] = []

    def only_the_edge(route: Any) -> None:
        if route.request.url.startswith(stack.base_url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_edge)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert outside == [] and errors == []


def sign_in(page: Any, stack: Stack, key: str) -> None:
    page.goto(f"{stack.base_url}/ui/")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard is enough
    expect(page.locator("#who-name")).to_be_visible()
    assert key not in page.url


def shoot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def wait_for_requests(page: Any, count: int) -> None:
    """Refresh the dashboard until the ledger rows (written in batches) show."""
    deadline = time.monotonic() + 15
    while page.locator("#m-requests").inner_text() != str(count):
        assert time.monotonic() < deadline, page.locator("#m-requests").inner_text()
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(300)


def test_admin_creates_uses_watches_and_revokes_a_key(
    page: Any, stack: Stack, upstream: FakeUpstream, shots: Path
) -> None:
    page.goto(f"{stack.base_url}/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shoot(page, shots, "01-sign-in")
    sign_in(page, stack, ADMIN_KEY)
    expect(page.get_by_role("heading", name="Usage: all teams")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("localStorage.length") == 0

    # Create a key: its secret is shown once, with a copy button.
    page.get_by_role("link", name="Keys").click()
    page.locator("#create-key summary").click()
    page.get_by_label("Name").fill("browser-key")
    page.get_by_label("Team (empty: its own)").fill("web")
    page.get_by_label("Models, comma-separated (empty: all)").fill(CHAT_MODEL)
    page.get_by_label("rpm (empty: unlimited)").fill("600")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").inner_text()
    assert re.fullmatch(r"sk-aq-[A-Za-z0-9_-]{43}", secret)
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    shoot(page, shots, "02-key-created")
    page.get_by_role("button", name="I have stored it").click()
    row = page.locator("#keys-table tr", has_text="browser-key")
    expect(row).to_contain_text("web")
    expect(row).to_contain_text("rpm 600")
    expect(row).to_contain_text(secret[:10])  # the preview
    key_id = row.get_attribute("data-key-id")
    assert secret not in page.content()  # never again
    page.reload()
    assert secret not in page.content()

    # Use it through the API: two requests from two users.
    client = stack.sdk(secret)
    for user in ("alice", "bob"):
        answer = client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], user=user
        )
        assert answer.usage is not None
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 2)

    # The dashboard shows them with their token counts, per user for this key.
    page.get_by_role("link", name="Usage").click()
    page.get_by_label("Team", exact=True).select_option("web")
    page.get_by_label("Time frame", exact=True).select_option("1h")
    wait_for_requests(page, 2)
    expect(page.locator("#m-input")).to_have_text("22")
    expect(page.locator("#m-output")).to_have_text("4")
    expect(page.locator("#m-total")).to_have_text("26")
    expect(page.locator("#m-failed")).to_have_text("0")
    models = page.locator("#t-models tbody")
    expect(models.locator("tr", has_text=CHAT_MODEL)).to_contain_text("2")
    expect(models.locator("tr", has_text=IDLE_MODEL).locator("td").first).to_have_text("0")
    page.get_by_label("Key", exact=True).select_option(key_id)
    users = page.locator("#t-users tbody")
    expect(users.locator("tr")).to_have_count(2)
    expect(users.locator("tr", has_text="alice").locator("td").first).to_have_text("1")
    shoot(page, shots, "03-usage-one-key")
    page.get_by_label("Time frame", exact=True).select_option("custom")  # from the last hour
    page.get_by_label("Buckets", exact=True).select_option("hour")
    expect(page.get_by_label("From")).not_to_have_value("")
    expect(page.locator("#c-time-title")).to_have_text("Requests over time (per hour)")
    expect(page.locator("#m-requests")).to_have_text("2")
    page.get_by_label("Time frame", exact=True).select_option("1h")
    page.get_by_label("Buckets", exact=True).select_option("auto")
    page.get_by_label("Key", exact=True).select_option("")
    page.get_by_label("Team", exact=True).select_option("")
    wait_for_requests(page, 2)
    shoot(page, shots, "04-usage-all-teams")

    # Revoke it, with a confirmation; the API refuses it within a second.
    page.get_by_role("link", name="Keys").click()
    page.get_by_role("button", name="Revoke browser-key").click()
    expect(page.locator("#confirm")).to_be_visible()
    page.locator("#confirm").get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Revoke browser-key").focus()
    page.keyboard.press("Enter")  # by keyboard: Escape dismisses the confirmation
    expect(page.locator("#confirm")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(page.locator("#keys-table tr", has_text="browser-key")).to_contain_text("active")
    page.get_by_role("button", name="Revoke browser-key").click()
    page.locator("#confirm").get_by_role("button", name="Revoke").click()
    expect(page.locator("#keys-table tr", has_text="browser-key")).to_contain_text("revoked")
    shoot(page, shots, "05-keys")
    deadline = time.monotonic() + 3
    while True:
        try:
            client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        except openai.AuthenticationError as refused:
            assert "revoked" in str(refused)
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.1)

    # Edit limits of a key through the form.
    other = create_key(stack, name="editable", team="web")
    page.reload()
    page.get_by_role("button", name="Edit editable").click()
    page.locator("#edit-output_tpm").fill("9000")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator(f"#keys-table tr[data-key-id='{other['id']}']")).to_contain_text(
        "output_tpm 9,000"
    )

    # Teams, models, files and batches pages.
    page.get_by_role("link", name="Teams").click()
    expect(page.get_by_role("heading", name="Team web")).to_be_visible()
    shoot(page, shots, "06-teams")
    page.get_by_role("link", name="Models").click()
    models_table = page.locator("#models-table")
    expect(models_table.locator("tr", has_text=IDLE_MODEL)).to_contain_text("vision")
    expect(models_table.locator("tr", has_text=CHAT_MODEL)).to_contain_text("serving")
    shoot(page, shots, "07-models")

    uploaded = stack.sdk().files.create(file=("notes.txt", b"hello console"), purpose="user_data")
    page.get_by_role("link", name="Files").click()
    expect(page.locator("#files-table")).to_contain_text("notes.txt")
    page.get_by_role("button", name="Inspect notes.txt").click()
    expect(page.locator("#inspect-slot pre")).to_contain_text(uploaded.id)
    shoot(page, shots, "08-files")
    page.get_by_role("button", name="Delete notes.txt").click()
    page.locator("#confirm").get_by_role("button", name="Delete").click()
    expect(page.locator("#files-table")).not_to_contain_text("notes.txt")
    with pytest.raises(openai.NotFoundError):
        stack.sdk().files.retrieve(uploaded.id)

    # A slow batch: inspected, then cancelled from the page. 30 lines, 4 at a time,
    # 2 s each: in progress for 15 s, longer than the page's steps take on a loaded
    # machine. (This test once set the delay on the fixture function, not on the
    # upstream, so its lines ran at full speed and the batch could finish first.)
    upstream.default = Reply.stream("slow", first_delay_s=2.0)
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        + b"\n"
        for n in range(30)
    )
    batch_input = stack.sdk().files.create(file=("lines.jsonl", lines), purpose="batch")
    batch = stack.sdk().batches.create(
        input_file_id=batch_input.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    page.get_by_role("link", name="Batches").click()
    expect(page.locator("#batches-table")).to_contain_text(batch.id)
    page.get_by_role("button", name=f"Inspect {batch.id}").click()
    expect(page.locator("#inspect-slot pre")).to_contain_text(batch_input.id)
    shoot(page, shots, "09-batches")
    page.get_by_role("button", name=f"Cancel {batch.id}").click()
    # The page's own cancel call, waited for as long as a loaded machine needs (it
    # shares one SQLite file with every service here), then what the row shows.
    with page.expect_response(lambda r: r.url.endswith("/cancel"), timeout=30_000) as sent:
        page.locator("#confirm").get_by_role("button", name="Cancel batch").click()
    assert sent.value.status == 200, sent.value.text()
    expect(page.locator("#batches-table tr", has_text=batch.id)).to_contain_text(
        re.compile("cancelling|cancelled")
    )
    assert stack.sdk().batches.retrieve(batch.id).status in ("cancelling", "cancelled")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_team_key_sees_its_own_team_and_no_admin_page(
    page: Any, stack: Stack, shots: Path
) -> None:
    web = create_key(stack, name="web-neighbour", team="web")
    mine = create_key(stack, name="solo-key", team="solo")
    stack.sdk(web["key"]).chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "from web"}]
    )
    stack.sdk(mine["key"]).chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "from solo"}], user="me"
    )
    page.goto(f"{stack.base_url}/ui/")
    expect(page.get_by_label("API key")).to_be_focused()  # ready to type
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    sign_in(page, stack, mine["key"])
    expect(page.get_by_role("heading", name="Usage: team solo")).to_be_visible()
    expect(page.get_by_label("Team", exact=True)).to_be_disabled()
    page.get_by_label("Time frame", exact=True).select_option("1h")
    wait_for_requests(page, 1)
    expect(page.locator("#t-top")).to_contain_text("solo-key")
    expect(page.locator("#t-top")).not_to_contain_text("web-neighbour")
    options = page.get_by_label("Key", exact=True).locator("option").all_inner_texts()
    assert options == ["All keys", f"solo-key ({mine['preview']})"]
    shoot(page, shots, "10-team-usage")

    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="Keys of team solo")).to_be_visible()
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    assert page.locator("#create-key").count() == 0
    assert page.get_by_role("button", name=re.compile("Revoke|Edit")).count() == 0
    shoot(page, shots, "11-team-keys")
    page.get_by_role("link", name="Teams").click()
    expect(page.get_by_role("heading", name="Team solo", level=2)).to_be_visible()
    assert page.get_by_role("button", name=re.compile("Save limits")).count() == 0

    # What the page could try by hand is refused by the API.
    statuses = page.evaluate(
        """async ([web]) => {
            const key = sessionStorage.getItem("aqueduct.console.key");
            const ask = async (path, method) => (await fetch(path, {
                method: method || "GET", headers: {Authorization: `Bearer ${key}`}})).status;
            return {
                adminKeys: await ask("/v1/admin/keys"),
                adminUsage: await ask("/v1/admin/usage"),
                revoke: await ask(`/v1/admin/keys/${web}`, "DELETE"),
                otherTeam: await ask("/v1/console/usage?team=web"),
                otherKey: await ask(`/v1/console/usage?key_id=${web}`),
                otherKeys: await ask("/v1/console/keys?team=web"),
            };
        }""",
        [web["id"]],
    )
    assert statuses == {
        "adminKeys": 403,
        "adminUsage": 403,
        "revoke": 403,
        "otherTeam": 403,
        "otherKey": 404,
        "otherKeys": 403,
    }

    # Readable at a phone's width.
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("link", name="Usage").click()
    wait_for_requests(page, 1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, shots, "12-phone-usage")
