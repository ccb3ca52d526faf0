"""`python -m lift3d.batch --serve outputs/<batch>`: serve a batch folder (its report and files) on
http://127.0.0.1:<port>/ — the 3D views need http:// (browsers refuse to fetch a GLB from file://)."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".glb": "model/gltf-binary", ".mp4": "video/mp4", ".js": "text/javascript"}

    def log_message(self, format, *args):  # noqa: A002 — one line per request is noise in a batch log
        pass


def make_server(batch_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server of batch_dir (port 0: any free port; the bound one is server.server_address[1])."""
    batch_dir = Path(batch_dir)
    if not (batch_dir / "index.html").is_file():
        raise FileNotFoundError(f"{batch_dir}/index.html not found: pass a batch folder (outputs/<batch>) "
                                f"or build its report with python -m lift3d.batch --report {batch_dir}.")
    handler = functools.partial(_QuietHandler, directory=str(batch_dir))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_in_thread(batch_dir: Path, host: str = "127.0.0.1", port: int = 0):
    """(server, url) with the server running in a daemon thread; call server.shutdown() to stop it."""
    server = make_server(batch_dir, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/index.html"


def serve(batch_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    server = make_server(batch_dir, host, port)
    print(f"serving {batch_dir} on http://{host}:{server.server_address[1]}/index.html (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
