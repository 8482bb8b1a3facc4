"""The dashboard in a real browser: headless Chromium (Debian's package) driven by selenium through
Debian's chromedriver, against the real API server and worker process.

It signs in through the token form, watches a running job's epoch count go up in the job list and
on the job page, cancels it with the page's button, opens a finished job's diagnosis and clicks
Remedy, and lands on the new job. Screenshots go to the test's tmp dir (paths printed with -s).
`.ci/run` installs chromium and chromium-driver; without them this module is skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from saddle.client import ApiError, Client
from tests.conftest import tiny_spec

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCENARIOS = Path(__file__).parent / "scenarios"

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])"
)
if not CHROMIUM or not CHROMEDRIVER.exists():
    pytest.skip(
        "chromium or /usr/bin/chromedriver missing (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = pytest.mark.usefixtures("worker_process")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy; DOM nodes replaced mid-read just retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def text_of(browser: Any, selector: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def epoch_shown(browser: Any, selector: str) -> int | None:
    text = text_of(browser, selector).strip()
    return int(text) if text.isdigit() else None


def wait_epoch(browser: Any, selector: str, above: int = -1) -> int:
    """The epoch number the page shows under ``selector``, once it is above ``above``."""

    def check() -> int | None:
        epoch = epoch_shown(browser, selector)
        return epoch + 1 if epoch is not None and epoch > above else None  # +1: epoch 0 is an answer

    return wait_for(f"{selector} to show an epoch above {above}", check) - 1


def script_errors(browser: Any) -> list[str]:
    """Console errors of our own code (a CSP violation, an exception); failed loads are the API's business."""
    return [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]


def test_dashboard_live_progress_diagnosis_and_remedy(
    browser: Any, api_server: str, token: str, sdk: Client, tmp_path: Path
) -> None:
    # Long enough to be watched running on a fast machine; the test cancels it once it has seen that.
    long_job = sdk.submit(tiny_spec(name="ui-live", epochs=5000, batch_size=4))
    # Diverges within an epoch; its learning_rate.too_high finding carries a fix the Remedy applies.
    diverging = sdk.submit(yaml.safe_load((SCENARIOS / "diverged_lr.yaml").read_text())["spec"])

    # Sign in through the form: the token goes to localStorage, not into any URL.
    browser.get(f"{api_server}/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{api_server}/")
    field = wait_for(
        "the token form", lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid=token-input]")
    )
    field.send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "[data-testid=token-save]").click()
    wait_for(
        "the job list", lambda: browser.find_elements(By.CSS_SELECTOR, "[data-testid=jobs] tr[data-job-id]")
    )
    assert browser.execute_script("return localStorage.getItem('saddle.token')") == token
    assert token not in browser.current_url

    # Live progress in the list: the running job's epoch number goes up without a reload.
    row = f"tr[data-job-id='{long_job['id']}']"
    wait_for(
        "the long job to run",
        lambda: browser.find_element(By.CSS_SELECTOR, row).get_attribute("data-status") == "running",
        timeout=120,
    )
    first = wait_epoch(browser, f"{row} [data-testid=epoch]")
    later = wait_epoch(browser, f"{row} [data-testid=epoch]", above=first)
    assert later > first
    badge = text_of(browser, f"{row} .badge")
    assert badge == "running"
    browser.save_screenshot(str(tmp_path / "dashboard-jobs.png"))

    # The job page follows it live too, then its Cancel button stops it.
    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    header = "[data-testid=job-header]"
    seen = wait_epoch(browser, f"{header} [data-testid=epoch]")
    wait_epoch(browser, f"{header} [data-testid=epoch]", above=seen)
    wait_for("the loss chart", lambda: browser.find_elements(By.CSS_SELECTOR, "[data-chart=loss] canvas"))
    # Cancel asks first: "Keep running" leaves the job alone, "Yes, cancel it" stops it.
    browser.find_element(By.CSS_SELECTOR, f"{header} [data-testid=cancel]").click()
    browser.find_element(By.CSS_SELECTOR, f"{header} [data-testid=cancel-keep]").click()
    assert browser.find_elements(By.CSS_SELECTOR, f"{header} [data-testid=cancel]")
    assert sdk.job(long_job["id"])["cancel_requested"] is False
    browser.find_element(By.CSS_SELECTOR, f"{header} [data-testid=cancel]").click()
    browser.find_element(By.CSS_SELECTOR, f"{header} [data-testid=cancel-confirm]").click()
    assert sdk.wait(long_job["id"], timeout=60)["status"] == "cancelled"
    wait_for("the cancelled badge", lambda: "cancelled" in text_of(browser, f"{header} .badge"))

    # A finished job's diagnosis: verdict card first, evidence, the patch, and a Remedy button.
    finished = sdk.wait(diverging["id"], timeout=180)
    assert finished["verdict"] == "diverged", finished
    browser.get(f"{api_server}/#/jobs/{diverging['id']}")
    verdict_card = wait_for(
        "the verdict card",
        lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid=diagnoses] .card[data-kind=verdict]"),
    )
    assert verdict_card.get_attribute("data-code") == "diverged"
    finding = wait_for(
        "the learning-rate finding",
        lambda: browser.find_element(By.CSS_SELECTOR, ".card[data-code='learning_rate.too_high']"),
    )
    assert finding.find_elements(By.CSS_SELECTOR, "table.evidence tr")
    assert '"lr"' in finding.find_element(By.CSS_SELECTOR, "pre.patch").text
    # The curves mark where the verdict's evidence says it happened.
    mark = wait_for(
        "the verdict's marker on the loss chart",
        lambda: text_of(browser, "[data-chart=loss] [data-marker=verdict]"),
    )
    assert mark.startswith("diverged: epoch ")
    wait_for(
        "the spectra table", lambda: browser.find_elements(By.CSS_SELECTOR, "[data-testid=spectra] tbody tr")
    )
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "dashboard-diagnosis.png"))

    # Remedy: POST /v1/jobs/{id}/remedy, then the page moves to the new job.
    browser.find_element(By.CSS_SELECTOR, "[data-testid=remedy]").click()
    new_id = wait_for(
        "the remedy job's page",
        lambda: (
            (h := browser.execute_script("return location.hash")).startswith("#/jobs/")
            and h.split("/")[-1] != diverging["id"]
            and h.split("/")[-1]
        ),
    )
    remedy = sdk.job(new_id)
    assert remedy["parent_id"] == diverging["id"] and remedy["kind"] == "remedy"
    assert remedy["spec"]["optimizer"]["lr"] < 10
    wait_for("the new job's header", lambda: new_id in text_of(browser, header))
    assert browser.find_elements(
        By.CSS_SELECTOR, f"{header} a[href='#/jobs/{diverging['id']}']"
    )  # "remedy of"
    browser.save_screenshot(str(tmp_path / "dashboard-remedy.png"))
    print(f"\nscreenshots in {tmp_path}")

    assert script_errors(browser) == []
    sdk.cancel(new_id)  # leave the shared worker free for the other tests


def sign_in(browser: Any, api_server: str, token: str) -> None:
    browser.get(f"{api_server}/")
    browser.execute_script("localStorage.clear(); localStorage.setItem('saddle.token', arguments[0])", token)


def test_charts_show_what_the_diagnosis_says_on_axes_fitted_to_the_job(
    browser: Any, api_server: str, token: str, sdk: Client, tmp_path: Path
) -> None:
    job = sdk.wait(sdk.submit(tiny_spec(name="ui-charts", epochs=10))["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    best = job["summary"]["best_epoch"]
    sign_in(browser, api_server, token)
    browser.get(f"{api_server}/#/jobs/{job['id']}")
    loss = "[data-chart=loss]"
    wait_for("the loss chart", lambda: browser.find_elements(By.CSS_SELECTOR, f"{loss} canvas"))

    # Linear by default (a log axis flattened a 19% rise); the choice is remembered across visits.
    assert browser.find_element(By.CSS_SELECTOR, loss).get_attribute("data-scale") == "linear"
    browser.find_element(By.CSS_SELECTOR, f"{loss} button[data-scale=log]").click()
    assert browser.find_element(By.CSS_SELECTOR, loss).get_attribute("data-scale") == "log"
    assert browser.execute_script("return localStorage.getItem('saddle.scale.loss')") == "log"
    browser.refresh()
    wait_for("the loss chart again", lambda: browser.find_elements(By.CSS_SELECTOR, f"{loss} canvas"))
    assert browser.find_element(By.CSS_SELECTOR, loss).get_attribute("data-scale") == "log"
    browser.find_element(By.CSS_SELECTOR, f"{loss} button[data-scale=linear]").click()

    # The best epoch is marked; epoch axes span the 10 epochs the job ran, not 0-100.
    marker = wait_for("the best-epoch marker", lambda: text_of(browser, f"{loss} [data-marker=best]"))
    assert marker.startswith(f"best epoch {best} (val loss ")
    for chart in ("loss", "accuracy", "eigenvalues"):
        element = wait_for(
            f"the {chart} chart's range",
            lambda c=chart: browser.find_element(By.CSS_SELECTOR, f"[data-chart={c}][data-x-range]"),
        )
        assert element.get_attribute("data-x-range") == "0,10", chart

    # No density was asked for: its card collapses to one line instead of half a row.
    density = browser.find_element(By.CSS_SELECTOR, "[data-chart=density]")
    assert "collapsed" in density.get_attribute("class").split()
    assert density.size["height"] < 60
    eigen = browser.find_element(By.CSS_SELECTOR, "[data-chart=eigenvalues]")
    assert eigen.size["width"] > 0.9 * eigen.find_element(By.XPATH, "..").size["width"]

    # An MLP's facts name its layers, not the conv channels only a cnn has.
    model = text_of(browser, "[data-testid=model]")
    assert "hidden [8]" in model and "channels" not in model
    browser.save_screenshot(str(tmp_path / "dashboard-charts.png"))
    assert script_errors(browser) == []


def test_a_failed_job_page_leads_with_its_error(
    browser: Any, api_server: str, token: str, sdk: Client
) -> None:
    failed = sdk.wait(sdk.submit(tiny_spec(name="ui-failed", model={"arch": "cnn"}))["id"], timeout=120)
    assert failed["status"] == "failed"
    sign_in(browser, api_server, token)
    browser.get(f"{api_server}/#/jobs/{failed['id']}")
    error = wait_for("the error", lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid=job-error]"))
    assert "image-shaped" in error.text
    # First on the page: before the header, the charts and the diagnosis.
    assert browser.execute_script(
        "return arguments[0].compareDocumentPosition(document.querySelector('[data-testid=job-header]'))"
        " & Node.DOCUMENT_POSITION_FOLLOWING",
        error,
    )
    empty = wait_for("the loss chart's note", lambda: text_of(browser, "[data-chart=loss] .empty"))
    assert "failed" in empty and "no data yet" not in empty


def test_remedy_buttons_only_for_what_the_api_accepts(
    browser: Any, api_server: str, token: str, sdk: Client
) -> None:
    from tests.test_first_hour import LR_FIX, finding_row, finished_job, verdict_row

    job_id = finished_job("good_fit", [verdict_row("good_fit"), finding_row("oscillation", LR_FIX)])
    sign_in(browser, api_server, token)
    browser.get(f"{api_server}/#/jobs/{job_id}")
    wait_for(
        "the finding card", lambda: browser.find_element(By.CSS_SELECTOR, ".card[data-code=oscillation]")
    )
    # The verdict carries no fix, so no Remedy button (the API would answer 422)...
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=remedy]")
    assert not browser.find_elements(By.CSS_SELECTOR, ".card[data-code=good_fit] [data-remedy]")
    # ...but the finding's own fix is accepted alone, and offered.
    browser.find_element(By.CSS_SELECTOR, ".card[data-code=oscillation] [data-remedy=oscillation]").click()
    new_id = wait_for(
        "the remedy's page",
        lambda: (
            (h := browser.execute_script("return location.hash")).split("/")[-1] != job_id
            and h.split("/")[-1]
        ),
    )
    assert sdk.job(new_id)["parent_id"] == job_id
    with contextlib.suppress(ApiError):  # cleanup only: a fast worker may have finished it already
        sdk.cancel(new_id)


def test_a_token_the_server_does_not_know_is_not_called_revoked(browser: Any, api_server: str) -> None:
    sign_in(browser, api_server, "sdl_mistyped")
    browser.get(f"{api_server}/")
    message = wait_for("the refusal", lambda: text_of(browser, "form p.error"))
    assert "not a valid token for this server" in message and "revoked" not in message


def test_sweep_page_without_a_sweep_says_so(browser: Any, api_server: str, token: str) -> None:
    browser.get(f"{api_server}/")
    browser.execute_script("localStorage.setItem('saddle.token', arguments[0])", token)
    browser.get(f"{api_server}/#/sweeps/{'0' * 32}")
    banner = wait_for(
        "an error or a no-sweeps note",
        lambda: text_of(browser, ".banner.error") or text_of(browser, "[data-testid=no-sweeps]"),
        timeout=30,
    )
    assert "not found" in banner or "no sweeps API" in banner


def test_page_and_scripts_are_public_but_hold_no_data(api_server: str) -> None:
    import httpx

    page = httpx.get(f"{api_server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{api_server}/static/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert httpx.get(f"{api_server}/static/vendor/uPlot.esm.js").status_code == 200
    assert httpx.get(f"{api_server}/static/%2e%2e/routers/dashboard.py").status_code == 404
    assert httpx.get(f"{api_server}/v1/jobs").status_code == 401  # the data still needs the token
