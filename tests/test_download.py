"""Options / weights given as http(s) URLs: downloaded once into a cache, resumed after a dropped connection."""

from __future__ import annotations

import hashlib
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import FIXTURE_OPTIONS, FIXTURE_WEIGHTS
from hub_server import LoopbackServer

from hf_elmo import download
from hf_elmo.cli import main as cli_main
from hf_elmo.download import resolve_file


class FileServer(LoopbackServer):
    """Serves `files` on 127.0.0.1 with Range support; `drops[path] = n` cuts the next n responses in half."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files = files
        self.honour_range = honour_range
        self.drops: Counter[str] = Counter()
        self.gets: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.gets.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and server.honour_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops[self.path] > 0:  # promise everything, send half, hang up
                    server.drops[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        super().__init__(Handler)


RELEASE = {
    "/elmo/tiny_options.json": FIXTURE_OPTIONS.read_bytes(),
    "/elmo/tiny_weights.hdf5": FIXTURE_WEIGHTS.read_bytes(),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)


def test_convert_from_urls_downloads_once(tmp_path, converted_fixture, capsys):
    with FileServer(dict(RELEASE)) as server:
        urls = [f"{server.url}/elmo/tiny_options.json", f"{server.url}/elmo/tiny_weights.hdf5"]
        args = ["convert", "--options-file", urls[0], "--weight-file", urls[1], "--cache-dir", str(tmp_path / "cache")]
        assert cli_main([*args, "--output-dir", str(tmp_path / "first")]) == 0
        err = capsys.readouterr().err
        assert "tiny_weights.hdf5" in err and "100%" in err  # the progress bar
        assert len(server.gets) == 2
        assert cli_main([*args, "--output-dir", str(tmp_path / "second")]) == 0
        assert len(server.gets) == 2  # the second run does not download again
    cached = sorted((tmp_path / "cache").iterdir(), key=lambda p: p.name.split("-", 1)[1])
    assert [p.name.split("-", 1)[1] for p in cached] == ["tiny_options.json", "tiny_weights.hdf5"]
    assert sha256(cached[1]) == sha256(FIXTURE_WEIGHTS)
    for out in ("first", "second"):
        assert sha256(tmp_path / out / "model.safetensors") == sha256(converted_fixture / "model.safetensors")
    # The model card names the URL the options came from.
    assert urls[0] in (tmp_path / "first" / "README.md").read_text()


def test_dropped_connection_resumes_with_a_range_request(tmp_path):
    with FileServer(dict(RELEASE)) as server:
        server.drops["/elmo/tiny_weights.hdf5"] = 2
        path = resolve_file(f"{server.url}/elmo/tiny_weights.hdf5", tmp_path)
    assert sha256(path) == sha256(FIXTURE_WEIGHTS)
    size = len(RELEASE["/elmo/tiny_weights.hdf5"])
    ranges = [r for _, r in server.gets]
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2}-"
    assert ranges[2] == f"bytes={size // 2 + (size - size // 2) // 2}-" and len(ranges) == 3
    assert not list(tmp_path.glob("*.part"))


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    with FileServer(dict(RELEASE), honour_range=False) as server:
        server.drops["/elmo/tiny_weights.hdf5"] = 1
        path = resolve_file(f"{server.url}/elmo/tiny_weights.hdf5", tmp_path)
    assert sha256(path) == sha256(FIXTURE_WEIGHTS) and len(server.gets) == 2


def test_connection_that_keeps_dropping_gives_up_with_a_clear_error(tmp_path):
    url_path = "/elmo/tiny_weights.hdf5"
    with FileServer(dict(RELEASE)) as server:
        server.drops[url_path] = 100
        with pytest.raises(OSError, match=rf"tiny_weights.hdf5: download failed after {download.MAX_ATTEMPTS} attempts"):
            resolve_file(f"{server.url}{url_path}", tmp_path)
        assert len(server.gets) == download.MAX_ATTEMPTS
    final = [p for p in tmp_path.iterdir() if not p.name.endswith(".part")]
    assert final == []  # never a truncated file under the final name


def test_missing_url_is_one_clear_error(tmp_path, capsys):
    with FileServer(dict(RELEASE)) as server:
        missing = f"{server.url}/elmo/nope_weights.hdf5"
        code = cli_main(["convert", "--options-file", f"{server.url}/elmo/tiny_options.json", "--weight-file", missing,
                         "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
        assert len([p for p, _ in server.gets if p.endswith("nope_weights.hdf5")]) == 1  # a 404 is not retried
    assert code == 2
    err = capsys.readouterr().err
    assert f"{missing}: download failed with HTTP 404" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
