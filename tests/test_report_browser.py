"""The report of fastchat + glaive (default model) opened in headless Chromium, as a user opens it.

Chromium is the distribution's `chromium` package (`make test` installs it when missing). Headless
Chromium lays a window out at least 500 px wide, so the report is loaded in an iframe of the
exact width (1280 and 390 px) inside a small harness page; a script in the harness (the report has
none) measures the iframe's page once everything loaded and writes the numbers into the DOM that
`--dump-dom` prints. Console messages come from `--enable-logging=stderr`. Screenshots of the
harness at the iframe's width are kept under out/test-artifacts/report/.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

ARTIFACTS = REPO / "out" / "test-artifacts" / "report"
HEIGHT = 1400
SECTIONS = ("verdict", "findings", "samples", "lengths", "sources", "packing", "conversations")
MEASURE = """<script>
addEventListener("load", () => {
  const frame = document.getElementById("report"), doc = frame.contentDocument, win = frame.contentWindow;
  const style = (el) => el ? getComputedStyle(el).backgroundColor : null;
  const tool = [...doc.querySelectorAll(".sample")].find(s => /tool calls the template/.test(s.textContent));
  const untrained = tool && [...tool.querySelectorAll(".toks .pr")].find(
    s => s.textContent.includes("<|im_start|>assistant\\n<|im_end|>"));
  document.getElementById("result").textContent = JSON.stringify({
    width: win.innerWidth, scrollWidth: doc.documentElement.scrollWidth,
    images: [...doc.images].map(i => i.complete ? i.naturalWidth : 0),
    imageWidths: [...doc.images].map(i => Math.round(i.getBoundingClientRect().width)),
    sections: [...doc.querySelectorAll("[id]")].map(e => e.id),
    verdict: doc.querySelector(".verdict .label")?.textContent,
    findings: [...doc.querySelectorAll(".finding h3")].map(h => h.textContent),
    samples: doc.querySelectorAll(".sample").length,
    trainedStyle: style(doc.querySelector(".toks .tr")), untrainedToolTurn: style(untrained),
  });
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found: `make test` installs it (apt-get install chromium)")
    return path


def _harness(report: Path, width: int) -> Path:
    harness = report.parent / f"harness-{width}.html"
    harness.write_text(f"<!DOCTYPE html><html><body style=\"margin:0\"><iframe id=report src=\"{report.name}\" "
                       f"style=\"border:0;display:block;width:{width}px;height:{HEIGHT}px\"></iframe>"
                       f"<pre id=result></pre>{MEASURE}</body></html>", encoding="utf-8")
    return harness


def _chromium_run(*args: str) -> subprocess.CompletedProcess:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory, real_data, model_dir) -> dict:
    from sftpack.reporting.stage import ReportConfig, run

    out = tmp_path_factory.mktemp("browser") / "report.html"
    inputs = [real_data / "fastchat_dummy_conversation.jsonl", real_data / "glaive_toolcall_en_demo.jsonl"]
    return run(inputs, out, ReportConfig(tokenizer=str(model_dir)))


def test_tool_calls_lead_the_findings_and_show_in_the_samples(report):
    top = [f["kind"] for f in report["findings"][:3]]
    assert "tool_calls_not_rendered" in top
    tools = next(f for f in report["findings"] if f["kind"] == "tool_calls_not_rendered")
    assert report["mask_audit"]["tool_calls_not_rendered"] == 211
    assert tools["message"].startswith("211 turns in ") and "--chat-template" in tools["advice"]
    assert len(tools["rows"]) == 10 and all(re.fullmatch(r"glaive_toolcall_en_demo\.jsonl:\d+", r) for r in tools["rows"])
    assert report["verdict"]["label"] == "Fix first" and "Tool calls" in report["verdict"]["reasons"][0]
    shown = [s for s in report["samples"] if s["audit"].get("tool_calls_not_rendered")]
    assert shown and {s["source"] for s in report["samples"]} == {"fastchat_dummy", "glaive_toolcall"}
    assert 6 <= len(report["samples"]) <= 12


@pytest.mark.parametrize("width", [1280, 390])
def test_report_renders_in_chromium(report, width):
    page = Path(report["html"])
    result = _chromium_run(f"--window-size={width},{HEIGHT}", "--dump-dom", _harness(page, width).as_uri())
    found = json.loads(html.unescape(re.search(r"<pre id=\"result\">(.*?)</pre>", result.stdout, re.S).group(1)))
    assert found["width"] == width and found["scrollWidth"] <= width  # no horizontal page overflow
    assert len(found["images"]) == 5 and all(w > 0 for w in found["images"])  # every plot loaded
    assert all(w >= min(width - 40, 300) for w in found["imageWidths"])  # plots use the column: legible
    assert set(SECTIONS) <= set(found["sections"])
    assert found["verdict"] == "Fix first"
    assert "Tool calls the template cannot render" in " ".join(found["findings"][:3])
    assert found["samples"] >= 6
    assert found["trainedStyle"] == "rgb(200, 240, 200)"  # highlighted
    assert found["untrainedToolTurn"] == "rgba(0, 0, 0, 0)"  # the tool-call turn: not highlighted
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report-{width}.png"
    _chromium_run(f"--window-size={width},{HEIGHT}", f"--screenshot={shot}", _harness(page, width).as_uri())
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (width, HEIGHT)
        pixels = image.convert("L").resize((width // 4, HEIGHT // 4))
        dark, light = pixels.getextrema()
        inked = sum(pixels.histogram()[:200]) / (pixels.width * pixels.height)
    assert dark < 60 < 240 < light and inked > 0.02  # text and boxes, not a blank page
