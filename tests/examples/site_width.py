"""The built docs site in headless Chromium at 1280 px: no code block scrolls sideways.

    make docs && python tests/examples/site_width.py [site] [--screenshot OUT.png PAGE]

Each page is copied beside itself with a script that, once laid out, counts the code blocks whose
scrollWidth exceeds their clientWidth and writes the count (and their first lines) into the title,
which `chromium --dump-dom` prints. test_site_width runs it when Chromium and a built site exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

WIDTH = 1280
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         f"--window-size={WIDTH},1000", "--virtual-time-budget=5000"]
PROBE = """<script>
addEventListener('load', () => {
  const wide = [...document.querySelectorAll('.md-content pre, .md-content pre > code')]
    .filter(e => e.scrollWidth > e.clientWidth + 1);
  document.title = 'OVERFLOW ' + wide.length + ' ' + wide.map(e => e.textContent.trim().split('\\n')[0].slice(0, 50))
    .join(' | ');
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def overflowing(page: Path, browser: str) -> tuple[int, str]:
    """(how many code blocks scroll sideways on `page` at WIDTH px, their first lines)."""
    probe = page.with_name(f"_probe_{page.name}")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = subprocess.run([browser, *FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=120).stdout
    finally:
        probe.unlink()
    match = re.search(r"<title>OVERFLOW (\d+) ?(.*?)</title>", dom, re.S)
    if not match:
        raise RuntimeError(f"{page}: the probe did not run")
    return int(match.group(1)), match.group(2)


def pages(site: Path) -> list[Path]:
    return [site / "index.html", *sorted(site.glob("guides/*/index.html")),
            *sorted(site.glob("reference/*/index.html")), site / "performance" / "index.html"]


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv and not argv[0].startswith("--") else Path("site")
    browser = chromium()
    if browser is None:
        print("no chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    if "--screenshot" in argv:
        out, page = argv[argv.index("--screenshot") + 1:argv.index("--screenshot") + 3]
        subprocess.run([browser, *FLAGS, f"--screenshot={Path(out).resolve()}", (site / page).resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
        return 0
    bad = 0
    for page in pages(site):
        count, first = overflowing(page, browser)
        print(f"{count:3d} wide code block(s)  {page.relative_to(site)}  {first}")
        bad += count
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
