"""The admin console and the offline docs in a real headless browser (Debian's chromium through
chromedriver; scripts/test.sh installs them where missing): log in with a key, see a model, run a
search and see the result's chunk, clear the cache, a plain user's key is refused; a screenshot is
saved as a test artefact (`test-artifacts/admin-console.png`). `/docs` renders from local assets
and its Authorize button sends the key: a "Try it out" of `GET /api/v1/models` answers 200."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ADMIN_KEY, LiveServer, make_settings, require_service, write_keys_file

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
USER_KEY = "user-key-console-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        require_service("chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(str(driver)), options=options)
    session.implicitly_wait(0)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("console")
    settings = make_settings(data, tiktoken_dir, api_keys_file=write_keys_file(data, {"eve": USER_KEY}))
    with LiveServer(settings) as running:
        import httpx

        added = httpx.post(f"{running.base_url}/api/v1/media/add", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                           json={"title": "Lighthouses", "content": "The keeper polished the great lens at dawn."},
                           timeout=120)
        assert added.status_code == 201, added.text
        yield running


def wait_for(browser: object, predicate: object, timeout: float = 60) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(predicate)  # type: ignore[arg-type]


def test_console_login_models_search_and_cache_clear(browser: object, server: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    b.get(f"{server.base_url}/admin")  # type: ignore[attr-defined]
    b.find_element(By.ID, "key").send_keys(USER_KEY)  # type: ignore[attr-defined]
    b.find_element(By.ID, "login-button").click()  # type: ignore[attr-defined]
    wait_for(b, lambda d: d.find_element(By.ID, "login-error").text)
    assert b.find_element(By.ID, "login-error").text == "admin key required"  # type: ignore[attr-defined]

    key = b.find_element(By.ID, "key")  # type: ignore[attr-defined]
    key.clear()
    key.send_keys(ADMIN_KEY)
    b.find_element(By.ID, "login-button").click()  # type: ignore[attr-defined]
    wait_for(b, lambda d: "all-MiniLM-L6-v2" in d.find_element(By.ID, "models").text)
    wait_for(b, lambda d: d.find_element(By.ID, "health-status").text in ("healthy", "degraded"))
    wait_for(b, lambda d: "Lighthouses" in d.find_element(By.ID, "media").text)
    wait_for(b, lambda d: "completed" in d.find_element(By.ID, "jobs").text)
    wait_for(b, lambda d: " MB)" in d.find_element(By.ID, "models").text)    # the loaded model and its memory

    b.find_element(By.ID, "query").send_keys("who polished the lens?")  # type: ignore[attr-defined]
    b.find_element(By.ID, "search-button").click()  # type: ignore[attr-defined]
    wait_for(b, lambda d: "polished the great lens" in d.find_element(By.ID, "results").text)

    b.find_element(By.ID, "clear-cache").click()  # type: ignore[attr-defined]
    wait_for(b, lambda d: d.find_element(By.ID, "cache-result").text.startswith("cleared "))
    ARTIFACTS.mkdir(exist_ok=True)
    b.execute_script("window.scrollTo(0, 0)")  # type: ignore[attr-defined]
    assert b.save_screenshot(str(ARTIFACTS / "admin-console.png"))  # type: ignore[attr-defined]
    assert (ARTIFACTS / "admin-console.png").stat().st_size > 10_000


def test_docs_render_offline_and_authorize_sends_the_key(browser: object, server: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    b = browser
    b.get(f"{server.base_url}/docs")  # type: ignore[attr-defined]
    wait_for(b, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))      # rendered: the assets loaded
    resources = b.execute_script(  # type: ignore[attr-defined]
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(server.base_url) for r in resources), resources   # nothing external

    b.find_element(By.CSS_SELECTOR, "button.authorize").click()  # type: ignore[attr-defined]
    field = wait_for(b, lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux input"))
    field.send_keys(ADMIN_KEY)  # type: ignore[attr-defined]
    b.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()  # type: ignore[attr-defined]
    b.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()  # type: ignore[attr-defined]

    operation = b.find_element(By.ID, "operations-embeddings-openai_models_api_v1_models_get")  # type: ignore[attr-defined]
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait_for(b, lambda _d: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()  # type: ignore[index]
    wait_for(b, lambda _d: operation.find_elements(By.CSS_SELECTOR, ".execute"))[0].click()  # type: ignore[index]
    status = wait_for(b, lambda _d: operation.find_elements(By.CSS_SELECTOR,
                                                            ".live-responses-table tbody .response-col_status"))
    assert status[0].text.strip().startswith("200"), status[0].text  # type: ignore[index]
