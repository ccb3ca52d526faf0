"""Open a batch report in headless Chromium and check that every video and 3D view loaded.

    python -m lift3d.batch.browser_check outputs/<batch> [--screenshot report.png]

Serves the batch folder on a free local port (lift3d.batch.serve), runs Chromium headless
(Debian: `apt-get install chromium`) with a virtual-time budget, takes a screenshot and reads back
the page's DOM: the report marks each <video> and <model-viewer> `data-state="loaded"` or
`"error"` and collects uncaught errors and console.error calls in #page-errors. Exit status 0 when
all media loaded and the page logged no error.
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lift3d.batch.serve import serve_in_thread


@dataclass
class PageCheck:
    videos: list[str] = field(default_factory=list)   # data-state of each <video>, in page order
    viewers: list[str] = field(default_factory=list)  # data-state of each <model-viewer>
    errors: str = ""                                  # text of #page-errors
    screenshot: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return (not self.errors and all(s == "loaded" for s in self.videos + self.viewers))


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _states(dom: str, tag: str) -> list[str]:
    states = []
    for m in re.finditer(rf"<{tag}\b[^>]*>", dom):
        s = re.search(r'data-state="([a-z]+)"', m.group(0))
        states.append(s.group(1) if s else "pending")
    return states


def check_report(batch_dir: Path, screenshot: Optional[Path] = None, budget_ms: int = 20000,
                 window: str = "1000,1400", timeout_s: float = 120) -> PageCheck:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found: install it (Debian/Ubuntu: apt-get install chromium)")
    server, url = serve_in_thread(Path(batch_dir))
    try:
        cmd = [chromium, "--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--mute-audio", "--hide-scrollbars", f"--window-size={window}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom"]
        if screenshot is not None:
            cmd.append(f"--screenshot={Path(screenshot).resolve()}")
        proc = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=timeout_s)
    finally:
        server.shutdown()
        server.server_close()
    dom = proc.stdout
    if "<body" not in dom:
        raise RuntimeError(f"Chromium returned no page (exit {proc.returncode}): {proc.stderr[-2000:]}")
    errors = re.search(r'<pre id="page-errors"[^>]*>(.*?)</pre>', dom, re.S)
    return PageCheck(videos=_states(dom, "video"), viewers=_states(dom, "model-viewer"),
                     errors=html.unescape(errors.group(1)).strip() if errors else "<no #page-errors element>",
                     screenshot=Path(screenshot) if screenshot is not None and Path(screenshot).is_file() else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("batch_dir")
    p.add_argument("--screenshot", default=None, help="PNG to write")
    p.add_argument("--budget-ms", type=int, default=20000, help="Chromium's virtual-time budget")
    args = p.parse_args(argv)
    check = check_report(Path(args.batch_dir), Path(args.screenshot) if args.screenshot else None, args.budget_ms)
    print(f"videos: {check.videos}\n3D views: {check.viewers}\npage errors: {check.errors or 'none'}")
    if check.screenshot:
        print(f"screenshot: {check.screenshot}")
    print("OK" if check.ok else "NOT OK")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
