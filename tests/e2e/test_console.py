"""The operations console in a real browser: headless Chromium (Debian's ``chromium``) driven
by Selenium through Debian's ``chromedriver``, against the real stack.

It signs in with a token, shows an image created through the API, shows an Update's operation
moving to done without a reload (the page is the same document throughout: a marker set on its
``window`` survives), cancels an operation, and refuses a viewer's cancel. A screenshot of the
page is saved in the test's tmp dir (its path is printed) for a person to look at.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.client import create_ready_image, folder, image_id_of, unique, wait_done
from tests.e2e.rest import http_port
from tests.e2e.test_security import make_token
from yandex.cloud.baremetal.v1alpha import image_service_pb2
from yandex.cloud.operation import operation_service_pb2

pytestmark = pytest.mark.e2e

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

T = TypeVar("T")
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(driver_path).exists():
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
    ):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium does not start here: {exc.msg}")
    driver.set_script_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


async def in_browser(action: Callable[[], T]) -> T:
    """Selenium blocks: run it beside the event loop, which serves the test's own clients."""
    return await asyncio.to_thread(action)


def until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait for ``condition``; the tables are redrawn every 2 s, so an element found may be
    replaced before it is read: that try is simply made again."""
    return WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.1,
        ignored_exceptions=[StaleElementReferenceException],
    ).until(condition, message=f"the console never showed {what}")


def click(driver: Any, selector: str, what: str) -> None:
    """A real click on the element, once it is there (again, if it was redrawn meanwhile)."""
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).click() or True, what)


def cells(driver: Any, selector: str) -> list[str]:
    return [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, f"{selector} td")]


def progress_of(driver: Any, table: str, operation_id: str) -> str | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-operation-id="{operation_id}"]')
    return rows[0].get_attribute("data-progress") if rows else None


def answer_confirmation(driver: Any, accept: bool) -> str:
    """The page's confirmation dialog: its question, then OK or Cancel."""
    dialog = WebDriverWait(driver, WAIT_SECONDS).until(
        expected_conditions.alert_is_present(), message="the console asked nothing"
    )
    question = str(dialog.text)
    if accept:
        dialog.accept()
    else:
        dialog.dismiss()
    return question


def image_cell(image: Any) -> str:
    """An operation's Image cell: the image's name, its ID below."""
    return f"{image.name}\n{image.id}"


def show_folder(driver: Any, folder_id: str) -> None:
    """Name another folder in the Folder box and show it."""
    box = driver.find_element(By.ID, "folder")
    box.clear()
    box.send_keys(folder_id)
    driver.find_element(By.ID, "show-folder").click()


def sign_in(driver: Any, base: str, token: str, folder_id: str) -> None:
    driver.get(f"{base}/console")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    until(driver, lambda d: d.find_element(By.ID, "token").is_displayed(), "the token form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "use-token").click()
    until(driver, lambda d: d.find_element(By.ID, "folder").is_displayed(), "the folder form")
    show_folder(driver, folder_id)


async def test_the_console_shows_images_and_live_operations_and_cancels(
    browser, api, images, operations, blobs, db, database_url, tmp_path
):
    base = f"http://127.0.0.1:{http_port(api)}"
    folder_id = folder()
    token = make_token(database_url, unique("console-editor"), folder_id)
    image = await create_ready_image(
        images, operations, blobs.url("/blob/64"), folder_id, description="shown in the console"
    )

    await in_browser(lambda: sign_in(browser, base, token, folder_id))
    row = f'#images tr[data-image-id="{image.id}"]'
    shown = await in_browser(lambda: until(browser, lambda d: cells(d, row), "the image"))
    assert shown[:4] == [image.name, image.id, "READY", image.checksum]
    # The token is in this tab's session storage only: no cookie, nothing in local storage.
    stored = await in_browser(
        lambda: browser.execute_script(
            "return [sessionStorage.getItem('console.token'),"
            " Object.values(localStorage).some(v => v.includes(arguments[0])), document.cookie]",
            token,
        )
    )
    assert stored == [token, False, ""]
    await in_browser(lambda: browser.execute_script("window.sameDocument = 'yes'"))

    # An Update held (the image row locked against the worker) shows unfinished, then done.
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM images WHERE id = $1 FOR KEY SHARE", image.id)
        updated = await images.Update(
            image_service_pb2.UpdateImageRequest(image_id=image.id, description="updated")
        )
        seen = await in_browser(
            lambda: until(
                browser,
                lambda d: progress_of(d, "recent", updated.id) in ("accepted", "running"),
                "the unfinished Update",
            )
        )
        assert seen
    await in_browser(
        lambda: until(
            browser, lambda d: progress_of(d, "recent", updated.id) == "done", "the Update done"
        )
    )
    assert await in_browser(lambda: browser.execute_script("return window.sameDocument")) == "yes"
    # The image's own operations.
    await in_browser(
        lambda: click(browser, f"{row} button.show-operations", "the Operations button")
    )
    await in_browser(
        lambda: until(
            browser,
            lambda d: progress_of(d, "image-operations", updated.id) == "done",
            "the image's operations",
        )
    )

    # Cancel a Create whose source stalls: the page asks first; "no" sends nothing.
    name = unique("stalled")
    stalled = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id, name=name, uri=blobs.url("/slow/1048576")
        )
    )
    button = f'#recent button.cancel[data-operation-id="{stalled.id}"]'
    await in_browser(lambda: click(browser, button, "the Cancel button"))
    question = await in_browser(lambda: answer_confirmation(browser, accept=False))
    assert question.startswith(
        f"Cancel operation {stalled.id} (create of {name} ({image_id_of(stalled)}))?"
    )
    kept = await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=stalled.id))
    assert not kept.done
    assert await in_browser(lambda: progress_of(browser, "recent", stalled.id)) != "cancelled"
    await in_browser(lambda: click(browser, button, "the Cancel button"))
    await in_browser(lambda: answer_confirmation(browser, accept=True))
    await in_browser(
        lambda: until(
            browser,
            lambda d: progress_of(d, "recent", stalled.id) == "cancelled",
            "the cancelled Create",
        )
    )
    message = await in_browser(lambda: browser.find_element(By.ID, "message").text)
    assert message == f"Operation {stalled.id}: cancelled"
    done = await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=stalled.id))
    assert done.done
    assert done.error.code == 1

    screenshot = tmp_path / "console.png"
    assert await in_browser(lambda: browser.save_screenshot(str(screenshot)))
    print(f"console screenshot: {screenshot}")
    assert await in_browser(lambda: browser.execute_script("return window.sameDocument")) == "yes"


async def test_a_viewers_cancel_is_refused_and_said_so(
    browser, api, images, operations, blobs, database_url
):
    base = f"http://127.0.0.1:{http_port(api)}"
    folder_id = folder()
    viewer = make_token(database_url, unique("console-viewer"), folder_id, role="viewer")
    stalled = await images.Create(
        image_service_pb2.CreateImageRequest(
            folder_id=folder_id, name=unique("stalled"), uri=blobs.url("/slow/1048576")
        )
    )
    await in_browser(lambda: sign_in(browser, base, viewer, folder_id))
    button = f'#recent button.cancel[data-operation-id="{stalled.id}"]'
    await in_browser(lambda: click(browser, button, "the Cancel button"))
    await in_browser(lambda: answer_confirmation(browser, accept=True))
    message = await in_browser(
        lambda: until(
            browser,
            lambda d: (m := d.find_element(By.ID, "message").text).startswith("Cancel") and m,
            "the refusal",
        )
    )
    assert message.startswith(f"Cancel of {stalled.id} refused: Permission denied")
    assert "HTTP 403" in message
    still = await operations.Get(operation_service_pb2.GetOperationRequest(operation_id=stalled.id))
    assert not still.done
    await operations.Cancel(operation_service_pb2.CancelOperationRequest(operation_id=stalled.id))
    assert image_id_of(stalled)
    await wait_done(operations, stalled.id)


async def test_a_folder_the_token_cannot_see_shows_the_refusal_and_nothing_of_another_folder(
    browser, api, images, operations, blobs, database_url
):
    base = f"http://127.0.0.1:{http_port(api)}"
    mine, theirs = folder(), folder()
    token = make_token(database_url, unique("console-folders"), mine)
    image = await create_ready_image(images, operations, blobs.url("/blob/64"), mine)
    await in_browser(lambda: sign_in(browser, base, token, mine))
    row = f'#images tr[data-image-id="{image.id}"]'
    await in_browser(lambda: until(browser, lambda d: cells(d, row), "the image"))
    # The page names its icon (no request for a missing /favicon.ico), and a Create that took
    # under a second shows its milliseconds, not "0.0 s".
    icon = "return document.querySelector('link[rel=icon]') !== null"
    assert await in_browser(lambda: browser.execute_script(icon))

    def create_row(driver: Any) -> list[str] | None:
        for row in driver.find_elements(By.CSS_SELECTOR, "#recent tbody tr"):
            texts = [td.text for td in row.find_elements(By.CSS_SELECTOR, "td")]
            if texts[1] == image_cell(image):
                return texts
        return None

    shown = await in_browser(lambda: until(browser, create_row, "the Create"))
    took = shown[6]  # id, image, kind, progress, by, when, duration
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", took), shown
    assert took != "0.0 s"

    await in_browser(lambda: show_folder(browser, theirs))
    refused = await in_browser(
        lambda: until(
            browser,
            lambda d: "HTTP 403" in (m := d.find_element(By.ID, "message").text) and m,
            "the refusal",
        )
    )
    assert f"Permission denied for folder {theirs}" in refused

    def failed_twice(driver: Any) -> Any:
        """Two refreshes failed, the second after the first: the state is settled."""
        text = driver.find_element(By.ID, "refreshed").text
        seen.add(text)
        failed = [t for t in seen if t.startswith("refresh failed")]
        return len(failed) >= 2 and text

    seen: set[str] = set()
    refreshed = await in_browser(lambda: until(browser, failed_twice, "refreshes failing"))
    # Nothing of the folder left is shown under the refusal, and nothing claims to be current.
    for table in ("recent", "images", "image-operations"):
        rows = await in_browser(lambda t=table: cells(browser, f"#{t} tbody"))
        assert rows == [], (table, rows)
    assert not refreshed.startswith("updated")
    assert "showing what was read" not in refreshed  # nothing of this folder was ever read

    # Back to the folder it can see: its image again, updated.
    await in_browser(lambda: show_folder(browser, mine))
    await in_browser(lambda: until(browser, lambda d: cells(d, row), "the image again"))
    message = await in_browser(lambda: browser.find_element(By.ID, "message").text)
    assert message == ""


def find(driver: Any, text: str) -> None:
    box = driver.find_element(By.ID, "find")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "find-id").click()


def message_of(driver: Any) -> str:
    return str(driver.find_element(By.ID, "message").text)


def row_cells(driver: Any, table: str, operation_id: str) -> list[str] | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-operation-id="{operation_id}"]')
    return [td.text for td in rows[0].find_elements(By.CSS_SELECTOR, "td")] if rows else None


async def test_find_by_id_names_images_follows_their_operations_and_shows_the_time_zone(
    browser, api, images, operations, blobs, database_url
):
    base = f"http://127.0.0.1:{http_port(api)}"
    mine, other = folder(), folder()
    token = make_token(database_url, unique("console-find"), mine, other)
    image = await create_ready_image(images, operations, blobs.url("/blob/64"), mine)
    await in_browser(lambda: browser.execute_script("localStorage.clear()"))
    await in_browser(lambda: sign_in(browser, base, token, other))
    await in_browser(
        lambda: until(
            browser,
            lambda d: d.find_element(By.ID, "refreshed").text.startswith("updated"),
            "the other folder",
        )
    )

    # An image's ID: its folder, and its operations, named.
    await in_browser(lambda: find(browser, image.id))
    await in_browser(
        lambda: until(
            browser,
            lambda d: d.find_element(By.ID, "selected-image").text == f"{image.name} ({image.id})",
            "the image's operations",
        )
    )
    assert (
        await in_browser(lambda: browser.find_element(By.ID, "folder").get_attribute("value"))
        == mine
    )
    assert await in_browser(lambda: message_of(browser)) == (
        f"Image {image.name} ({image.id}) in folder {mine}"
    )
    # The view follows the image's new operations with no further click.
    updated = await images.Update(
        image_service_pb2.UpdateImageRequest(image_id=image.id, description="live")
    )
    await in_browser(
        lambda: until(
            browser,
            lambda d: progress_of(d, "image-operations", updated.id) == "done",
            "the new Update in the image's operations",
        )
    )
    # The recent operations name the image, its ID below.
    shown = await in_browser(
        lambda: until(browser, lambda d: row_cells(d, "recent", updated.id), "the Update")
    )
    assert shown[1] == image_cell(image)

    # An operation's ID, from another folder: the operation, live, and its image's folder.
    await in_browser(lambda: show_folder(browser, other))
    await in_browser(lambda: find(browser, updated.id))
    found = await in_browser(
        lambda: until(browser, lambda d: row_cells(d, "found", updated.id), "the operation found")
    )
    assert found[:4] == [updated.id, image_cell(image), "update", "done"]
    assert await in_browser(lambda: message_of(browser)) == (
        f"Operation {updated.id}: update of {image.name} ({image.id}) in folder {mine}"
    )
    assert (
        await in_browser(lambda: browser.find_element(By.ID, "folder").get_attribute("value"))
        == mine
    )
    highlighted = await in_browser(
        lambda: until(
            browser,
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#recent tr.found[data-operation-id="{updated.id}"]'
            ),
            "the operation marked in the recent list",
        )
    )
    assert len(highlighted) == 1

    # What is not there, and what is not an ID, are said so; nothing shown changes.
    missing = "opn" + "0" * 17
    await in_browser(lambda: find(browser, missing))
    said = await in_browser(
        lambda: until(browser, lambda d: missing in (m := message_of(d)) and m, "the miss")
    )
    assert said.startswith(f"Nothing found for {missing}: ")
    assert "HTTP 404" in said
    await in_browser(lambda: find(browser, "not an id"))
    said = await in_browser(
        lambda: until(browser, lambda d: "not an id" in (m := message_of(d)) and m, "the refusal")
    )
    assert said.startswith("Nothing found for not an id: ")
    assert "HTTP 400" in said
    assert await in_browser(lambda: row_cells(browser, "found", updated.id))

    # Times in UTC on request, remembered across a reload; local again on request.
    started = updated.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    await in_browser(
        lambda: Select(browser.find_element(By.ID, "time-zone")).select_by_value("utc")
    )
    await in_browser(
        lambda: until(
            browser,
            lambda d: (row_cells(d, "found", updated.id) or [""] * 6)[5] == started,
            "the start time in UTC",
        )
    )
    await in_browser(browser.refresh)
    await in_browser(
        lambda: until(
            browser,
            lambda d: (row_cells(d, "recent", updated.id) or [""] * 6)[5] == started,
            "UTC after a reload",
        )
    )
    assert (
        await in_browser(lambda: browser.find_element(By.ID, "time-zone").get_attribute("value"))
        == "utc"
    )
    refreshed = await in_browser(lambda: browser.find_element(By.ID, "refreshed").text)
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d UTC", refreshed), refreshed
    await in_browser(
        lambda: Select(browser.find_element(By.ID, "time-zone")).select_by_value("local")
    )
    await in_browser(
        lambda: until(
            browser,
            lambda d: not (row_cells(d, "recent", updated.id) or ["UTC"] * 6)[5].endswith("UTC"),
            "local time again",
        )
    )
    assert (
        await in_browser(
            lambda: browser.execute_script("return localStorage.getItem('console.timeZone')")
        )
        == "local"
    )
    await in_browser(lambda: browser.execute_script("localStorage.clear()"))
