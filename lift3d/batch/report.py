"""The batch report: one HTML page, <batch>/index.html, rebuilt whenever a job ends.

Per job: the prompt and config (overrides on demand), status, attempts, wall time, peak memory,
final losses, scores (e.g. toy-world IoU / colour), the turntable video and an interactive view of
the exported GLB with `<model-viewer>`, loaded from <batch>/static/ (copied from
lift3d/batch/static/, shipped in the repository) so the page needs no network. All links are
relative: the batch folder can be moved or archived whole. A small script marks each video and
3D view as loaded or failed (`data-state`) and shows failures on the page; tests read it back
from headless Chromium.
"""
from __future__ import annotations

import html
import os
import shutil
import time
from pathlib import Path

from lift3d.batch.layout import JobPaths, read_json, tail
from lift3d.batch.progress import format_duration

STATIC = Path(__file__).resolve().parent / "static"

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} .summary{margin-bottom:1em;color:#444}
.jobs{display:grid;grid-template-columns:repeat(auto-fill,minmax(530px,1fr));gap:1em}
.job{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.7em}
.job h2{font-size:1.05em;margin:0 0 .3em;word-break:break-all}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;font-size:.85em}
.done{background:#2a7d2a}.failed{background:#b3261e}.running,.queued{background:#1f5fa8}
.left,.interrupted,.unknown{background:#777}
.media{display:flex;flex-wrap:wrap;gap:.5em;margin:.5em 0;align-items:center}
.media video{width:300px;height:auto;background:#eee;border-radius:4px}
.media model-viewer{width:200px;height:200px;background:#eee;border-radius:4px}
.media .none{width:200px;height:200px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
table{border-collapse:collapse;font-size:.85em} td{padding:.1em .6em .1em 0;vertical-align:top}
pre{font-size:.75em;background:#f3f3f3;padding:.4em;overflow-x:auto;max-height:14em}
.err{color:#b3261e;font-size:.85em}
"""

# In <head>, before anything loads: capture-phase listeners mark every <video> and <model-viewer>
# data-state="loaded" or "error" (shown beside it), and every uncaught error, failed resource or
# console.error call is listed in #page-errors. Tests read both back from headless Chromium.
HEAD_SCRIPT = """
window.__pageErrors = [];
function __reportError(text){
  window.__pageErrors.push(String(text));
  var box = document.getElementById('page-errors');
  if (box) { box.textContent = window.__pageErrors.join('\\n'); box.hidden = false; }
}
function __mark(el, state, why){
  if (el.dataset.state === 'error' || el.dataset.state === state) return;
  el.dataset.state = state;
  if (state === 'error') {
    var p = document.createElement('div'); p.className = 'err';
    p.textContent = 'could not load ' + el.getAttribute('src') + (why ? ': ' + why : '');
    el.parentNode.parentNode.appendChild(p);
    __reportError('could not load ' + el.getAttribute('src') + (why ? ': ' + why : ''));
  }
}
window.addEventListener('error', function(e){
  var t = e.target, tag = t && t.tagName;
  if (tag === 'VIDEO') return __mark(t, 'error', t.error ? 'media error ' + t.error.code : '');
  if (tag === 'MODEL-VIEWER') return __mark(t, 'error', e.detail && e.detail.type ? e.detail.type : '');
  __reportError('error: ' + (e.message || (t && (t.src || t.href)) || e));
}, true);
window.addEventListener('loadeddata', function(e){ if (e.target.tagName === 'VIDEO') __mark(e.target, 'loaded'); }, true);
window.addEventListener('load', function(e){ if (e.target && e.target.tagName === 'MODEL-VIEWER') __mark(e.target, 'loaded'); }, true);
window.addEventListener('unhandledrejection', function(e){ __reportError('unhandled rejection: ' + e.reason); });
(function(){ var ce = console.error; console.error = function(){ __reportError(Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
"""

# After the body: also poll the elements' own state (an event can fire before a listener exists).
SCRIPT = """
(function(){
  function poll(){
    document.querySelectorAll('video').forEach(function(v){ if (v.readyState >= 2) __mark(v, 'loaded'); });
    document.querySelectorAll('model-viewer').forEach(function(m){ if (m.loaded) __mark(m, 'loaded'); });
  }
  poll(); setInterval(poll, 250);
})();
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def copy_static(batch_dir: Path) -> None:
    dest = batch_dir / "static"
    dest.mkdir(parents=True, exist_ok=True)
    for f in STATIC.iterdir():
        target = dest / f.name
        if f.is_file() and (not target.exists() or target.stat().st_size != f.stat().st_size):
            shutil.copyfile(f, target)


def _short_path(path: str) -> str:
    """A config path relative to the repository when it is inside it."""
    from lift3d.batch.manifest import REPO

    p = Path(path)
    return str(p.relative_to(REPO)) if p.is_absolute() and p.is_relative_to(REPO) else str(p)


def _job_card(job: dict, batch_dir: Path) -> str:
    paths = JobPaths(batch_dir, job["id"])
    rec = paths.done() or paths.status() or {}
    state = rec.get("state", "left")
    title = job.get("prompt") or job["id"]
    config = _short_path(job.get("config", "?"))
    rows = [("job", job["id"]), ("config", config)]
    if job.get("parent"):
        rows.append(("after", job["parent"]))
    rows.append(("seed", job.get("seed")))
    if rec.get("attempt"):
        rows.append(("attempts", rec["attempt"]))
    if rec.get("wall_s") is not None:
        rows.append(("wall time", format_duration(rec["wall_s"])))
    if rec.get("peak_rss_mb"):
        rows.append(("peak RSS", f"{rec['peak_rss_mb']:.0f} MB"))
    if rec.get("cuda_visible_devices"):
        rows.append(("GPUs", rec["cuda_visible_devices"]))
    for k, v in sorted((rec.get("losses") or {}).items()):
        rows.append((k.replace("train/", ""), f"{v:.4g}"))
    for k, v in sorted((rec.get("scores") or {}).items()):
        rows.append((k, f"{v:.3f}" if isinstance(v, float) else v))
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    media = []
    if rec.get("video"):
        media.append(f'<video src="{_e(rec["video"])}" controls loop muted autoplay playsinline></video>')
    else:
        media.append('<div class="none">no video</div>')
    if rec.get("export", "") and str(rec["export"]).endswith(".glb"):
        media.append(f'<model-viewer src="{_e(rec["export"])}" loading="eager" camera-controls auto-rotate '
                     f'shadow-intensity="0" alt="{_e(title)}"></model-viewer>')
    elif rec.get("export"):
        media.append(f'<div class="none"><a href="{_e(rec["export"])}">{_e(Path(rec["export"]).name)}</a></div>')
    else:
        media.append('<div class="none">no mesh</div>')
    extra = ""
    if rec.get("error"):
        extra += f'<div class="err">{_e(rec["error"])}</div>'
    log = rec.get("log")
    if log and (batch_dir / log).is_file():
        if state == "failed":
            extra += f"<pre>{_e(tail(batch_dir / log, 15))}</pre>"
        extra += f'<div><a href="{_e(log)}">log</a></div>'
    overrides = "".join(f"<div>{_e(o)}</div>" for o in job.get("overrides", []))
    return (f'<div class="job" id="{_e(job["id"])}" data-status="{_e(state)}"><h2>{_e(title)} '
            f'<span class="badge {_e(state)}">{_e(state)}</span></h2>'
            f'<div class="media">{"".join(media)}</div><table>{table}</table>'
            f'<details><summary>overrides</summary>{overrides or "none"}</details>{extra}</div>')


def build_report(batch_dir: Path) -> Path:
    """Write <batch>/index.html (atomically) from batch.json and each job's markers."""
    batch_dir = Path(batch_dir)
    batch = read_json(batch_dir / "batch.json")
    if batch is None:
        raise FileNotFoundError(f"{batch_dir}/batch.json not found: is this a batch folder (python -m lift3d.batch)?")
    copy_static(batch_dir)
    cards, counts = [], {}
    for job in batch["jobs"]:
        card = _job_card(job, batch_dir)
        cards.append(card)
        state = card.split('data-status="', 1)[1].split('"', 1)[0]
        counts[state] = counts.get(state, 0) + 1
    finished = counts.get("done", 0) + counts.get("failed", 0) == len(batch["jobs"])
    refresh = "" if finished else '<meta http-equiv="refresh" content="30">'
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{_e(batch['name'])} — lift3d batch</title>
<style>{CSS}</style>
<script>{HEAD_SCRIPT}</script>
<script src="static/model-viewer.min.js"></script>
</head><body>
<h1>{_e(batch['name'])}</h1>
<pre id="page-errors" class="err" hidden></pre>
<div class="summary">{len(batch['jobs'])} job(s): {_e(summary)} — updated {time.strftime('%Y-%m-%d %H:%M:%S')}</div>
<div class="jobs">
{chr(10).join(cards)}
</div>
<script>{SCRIPT}</script>
</body></html>
"""
    out = batch_dir / "index.html"
    tmp = batch_dir / ".index.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, out)
    return out
