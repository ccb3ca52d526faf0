"""A local stand-in for the Hugging Face Hub (no network): serves one model folder as repo `repo_id`
over HTTP on 127.0.0.1, with the few endpoints `huggingface_hub` uses to look a repo up and download
it (repo info with its file list, the file tree, HEAD / GET of `/{repo}/resolve/{revision}/{file}`).

`stall_suffix`: files ending with it send their headers and the first half of their body on the first
GET, then nothing (a Hub or link that stalls mid-download); every later GET of them (the client's
resume attempts) sends headers and nothing. `requests` records (method, path) of every request.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from typing import Optional

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, folder: str, repo_id: str, stall_suffix: Optional[str] = None) -> None:
        self.folder, self.repo_id, self.stall_suffix = str(folder), repo_id, stall_suffix
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()  # set on close: stalled handlers return
        self.stalled_gets = 0
        self.files = sorted(os.path.relpath(os.path.join(root, f), self.folder)
                            for root, _, names in os.walk(self.folder) for f in names)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                path = self.path.split("?")[0]
                if path.startswith(f"/api/models/{hub.repo_id}"):
                    return self._send(200, hub._api(path).encode(), "application/json", body)
                prefix = f"/{hub.repo_id}/resolve/"
                rel = path[len(prefix):].split("/", 1)[-1] if path.startswith(prefix) else None
                if rel not in hub.files:
                    return self._send(404, b"", "text/plain", body)
                with open(os.path.join(hub.folder, rel), "rb") as fp:
                    data = fp.read()
                if not (body and hub.stall_suffix and rel.endswith(hub.stall_suffix)):
                    return self._send(200, data, "application/octet-stream", body, etag=True)
                self._headers(200, len(data), "application/octet-stream", etag=data)
                hub.stalled_gets += 1
                if hub.stalled_gets == 1:  # the first attempt gets half the file
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                hub.release.wait()

            def _headers(self, status: int, length: int, ctype: str, etag: Optional[bytes] = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(length))
                if etag is not None:
                    self.send_header("ETag", f'"{hashlib.sha256(etag).hexdigest()}"')
                    self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()

            def _send(self, status: int, data: bytes, ctype: str, body: bool, etag: bool = False) -> None:
                self._headers(status, len(data), ctype, etag=data if etag else None)
                if body:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _api(self, path: str) -> str:
        if "/tree/" in path:  # recursive file listing
            return json.dumps([{"type": "file", "path": f, "oid": "0" * 40,
                                "size": os.path.getsize(os.path.join(self.folder, f))} for f in self.files])
        return json.dumps({"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.files]})

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeHub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
