"""The HTML reports as a reader sees them: `report.html` of an analysis of tiny-model runs (made here) and the
committed study's `docs/findings/findings.html`, opened in headless Chromium (Debian's package, driven by
Playwright, which never downloads a browser of its own): no console error, no failed request, every figure
decoded (natural width > 0), the findings table one row per claim of docs/findings/claims.json, and screenshots
at desktop and phone width kept under the pytest temporary folder (their paths are printed at the end of the run).

`make test` installs the browser with apt where it can; without it (or without Playwright) these tests skip and
say why."""
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FINDINGS = ROOT / "docs" / "findings"
# Debian's full browser or its headless shell, whichever is installed
CHROMIUM = next((found for name in ("chromium-headless-shell", "chromium") if (found := shutil.which(name))), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
TUNE = ["--model", "tiny", "--task", "arith", "--tokens", "4", "--steps", "3", "--batch-size", "2", "--eval-size", "2",
        "--test-size", "2", "--train-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium-headless-shell where apt runs as root "
                    "(apt-get install chromium-headless-shell)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """report.html of `eptk analyze` over two tiny runs (soft and deep) with a capture's statistics: every figure
    the analysis draws."""
    from eptk.cli.main import main

    root = tmp_path_factory.mktemp("report")
    assert main(["capture", "--model", "tiny", "--examples", "16", "--samples", "32", "--quiet",
                 "--out", str(root / "stats")]) == 0
    assert main(["tune", *TUNE, "--method", "soft", "--prior", "normal", "--out", str(root / "runs" / "soft")]) == 0
    assert main(["tune", *TUNE, "--method", "deep", "--layers", "last:2", "--prior", "xavier",
                 "--out", str(root / "runs" / "deep")]) == 0
    assert main(["analyze", str(root / "runs"), "--stats", str(root / "stats"), "--permutations", "20",
                 "--out", str(root / "analysis")]) == 0
    return root / "analysis"


def open_page(browser, path: Path, width: str, shots: Path):
    """The page at one width after it loaded, with everything it logged; a full-page screenshot kept in `shots`."""
    w, h = WIDTHS[width]
    page = browser.new_page(viewport={"width": w, "height": h})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:120]} {r.failure}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    shot = shots / f"{path.stem}-{width}.png"
    screenshot(page, shot)
    return page, problems, shot


def screenshot(page, shot: Path, tries: int = 3) -> None:
    """A full-page screenshot. Chromium's headless shell sometimes answers "Unable to capture screenshot" on a
    busy machine (seen 2 times in 4 runs beside two training processes, never twice running): a capture
    failure of the browser, not of the page, so it is tried again; the page's own checks are untouched."""
    from playwright.sync_api import Error

    for attempt in range(tries):
        try:
            page.screenshot(path=str(shot), full_page=True)
            return
        except Error as error:
            if "Unable to capture screenshot" not in str(error) or attempt == tries - 1:
                raise


def figures(page) -> list[dict]:
    """Every <img>: its alt text, whether it finished loading, its decoded width, and whether its last pixel row
    is painted (the figures have opaque backgrounds; a truncated file decodes its header, so it has a width, but
    leaves the rows it lacks transparent)."""
    return page.evaluate("""() => [...document.images].map(e => {
        let painted = false;
        if (e.complete && e.naturalWidth > 0) {
            const canvas = document.createElement('canvas');
            canvas.width = e.naturalWidth; canvas.height = e.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(e, 0, 0);
            const row = context.getImageData(0, e.naturalHeight - 1, e.naturalWidth, 1).data;
            painted = row.some((value, i) => i % 4 === 3 && value > 0);
        }
        return {alt: e.alt, complete: e.complete, width: e.naturalWidth, painted};
    })""")


def check_figures_load(page, want: int) -> None:
    shown = figures(page)
    assert len(shown) == want, f"{len(shown)} figures on the page, {want} expected: {[f['alt'] for f in shown]}"
    broken = [f["alt"] for f in shown if not (f["complete"] and f["width"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    cut = [f["alt"] for f in shown if not f["painted"]]
    assert not cut, f"figures drawn only in part (a truncated file?): {cut}"


def check_screenshot(shot: Path, width: int, artifacts) -> None:
    from PIL import Image

    with Image.open(shot) as image:  # the whole page (wider than the window where the page overflows it)
        assert image.width >= width and image.height > 200, image.size
    artifacts.append(shot)


@pytest.mark.parametrize("width", WIDTHS)
def test_report_opens_with_every_figure(browser, analysis, width, browser_artifacts):
    page, problems, shot = open_page(browser, analysis / "report.html", width, browser_artifacts.folder)
    try:
        assert not problems, problems
        drawn = sorted((analysis / "plots").glob("*.png"))
        assert drawn, "the analysis drew no figure"
        check_figures_load(page, len(drawn))  # every figure the analysis drew, each decoded
        assert page.title() and page.locator("h2", has_text="Findings").count() == 1
        # wide tables scroll inside their own box: the page itself never scrolls sideways, on a phone either
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        page.close()
    check_screenshot(shot, WIDTHS[width][0], browser_artifacts)


def claims_table_rows(page, column: str = "verdict") -> list[dict] | None:
    """The body rows of the table whose header has `column` (`verdict`, or `<model>: verdict` when other
    models' verdicts stand beside): each row's cell texts and that column's cell."""
    return page.evaluate("""(column) => {
        const table = [...document.querySelectorAll('table')].find(t =>
            [...t.querySelectorAll('th')].some(th => th.textContent.trim().toLowerCase() === column));
        if (!table) return null;
        const heads = [...table.querySelectorAll('th')].map(th => th.textContent.trim().toLowerCase());
        const col = heads.indexOf(column);
        return [...table.querySelectorAll('tr')].filter(tr => tr.querySelector('td'))
            .map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim()))
            .map(cells => ({cells, verdict: cells[col]}));
    }""", column)


@pytest.mark.parametrize("width", WIDTHS)
def test_findings_open_with_every_figure_and_one_row_per_claim(browser, width, browser_artifacts):
    written = json.loads((FINDINGS / "claims.json").read_text())
    claims, beside = written["claims"], written.get("beside", [])
    page, problems, shot = open_page(browser, FINDINGS / "findings.html", width, browser_artifacts.folder)
    try:
        assert not problems, problems
        check_figures_load(page, len(list((FINDINGS / "figures").glob("*.png"))))
        column = f"{written['model']}: verdict" if beside else "verdict"
        rows = claims_table_rows(page, column)
        assert rows is not None, f"no table with a {column!r} column"
        assert len(rows) == len(claims), f"{len(rows)} rows in the claims table, {len(claims)} claims in claims.json"
        assert [r["verdict"] for r in rows] == [c["verdict"] for c in claims]
        links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
        assert all((FINDINGS / link).is_file() for link in links), links   # every link opens a page
        for other in beside:   # each other model's column holds that model's own verdicts, and its page opens
            theirs = {c["claim"]: c["verdict"] for c in json.loads(
                (FINDINGS / other["findings"]).with_name("claims.json").read_text())["claims"]}
            got = claims_table_rows(page, f"{other['model']}: verdict")
            assert [r["verdict"] for r in got] == [theirs.get(c["claim"], "not in its report") for c in claims]
            assert other["findings"].replace("FINDINGS.md", "findings.html") in links
    finally:
        page.close()
    check_screenshot(shot, WIDTHS[width][0], browser_artifacts)
