"""The offline plots page (`loraloop plots`) opened in headless Chromium: every chart renders from
the inlined Vega with no script error and nothing fetched from the network."""

import re
import shutil
import subprocess

import pytest
from conftest import copy_repo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_plots_page_renders_offline_in_chromium(tiny_fleet, tmp_path):
    repo = copy_repo(tiny_fleet[0], tmp_path / "repo")  # the fleet is shared: write in a copy
    out = tmp_path / "plots"
    res = subprocess.run(
        ["loraloop", "plots", "--out", "plots", "--template", str(tmp_path / "template.html")],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    shutil.move(repo / "plots", out)
    # A relative --out is printed as the absolute path of the page.
    assert res.stdout.split()[0] == str((repo / "plots/index.html").resolve())
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page  # nothing to fetch
    charts = re.findall(r"vegaEmbed\('#([^']+)'", page)
    assert len(charts) >= 6  # trajectory, train loss, eval loss for each of two lineages
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = res.stdout
    for chart in charts:
        start = dom.index(f'<div id="{chart}"')
        rendered = dom[start : start + 3000]
        assert 'class="marks"' in rendered and ("<svg" in rendered or "<canvas" in rendered), chart
    assert dom.count("mark-line role-mark") >= len(charts)  # lines drawn, not empty frames
    errors = [line for line in res.stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    assert not errors, errors
