"""Servers that lie or stall, started here on 127.0.0.1: every failure is one line naming the URL and the
cause, within a bounded time, and a server that ignores Range never sends more than a small object whole."""

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from typing import ClassVar

import pytest
from builders import fleet

import statefmt
from statefmt import StateError, StateUnreadableError, _container, _source


class Lying(http.server.BaseHTTPRequestHandler):
    """GET /500, /short, /redirect, /drip: one way each to fail a reader."""

    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/500":
            self.send_error(500, "Internal Server Error")
        elif self.path == "/short":
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-65535/100000")
            self.send_header("Content-Length", "65536")
            self.end_headers()
            self.wfile.write(b"x" * 100)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-65535/100000")
            self.send_header("Content-Length", "65536")
            self.end_headers()
            for _ in range(60):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)


class Counting(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server`'s own handler (it ignores Range), counting the bytes it sends."""

    sent: ClassVar[list[int]] = [0]

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        while data := source.read(1 << 16):
            outputfile.write(data)
            Counting.sent[0] += len(data)


@pytest.fixture
def serve():
    servers = []

    def start(handler):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "cause"), [("/500", "HTTP 500"), ("/short", "bytes of the"),
                                             ("/redirect", "Redirection to url 'file:///etc/passwd' is not allowed"),
                                             ("/drip", "s in all")])
def test_a_lying_or_stalling_server_is_one_line_naming_the_url(serve, monkeypatch, path, cause):
    monkeypatch.setattr(_source, "READ_DEADLINE", 2.0)
    url = serve(Lying) + path
    started = time.monotonic()
    with pytest.raises(StateUnreadableError) as error:
        statefmt.validate(url)
    assert time.monotonic() - started < 10
    assert error.value.source == url and cause in str(error.value) and "\n" not in str(error.value)


def test_the_cli_says_one_line_for_an_http_500(serve):
    url = serve(Lying) + "/500"
    result = subprocess.run([sys.executable, "-m", "statefmt", "validate", url, "--json"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 3 and result.stderr == f"{url}: HTTP 500 Internal Server Error\n"
    assert '"code": "unreadable"' in result.stdout


def test_python_http_server_serves_an_intact_small_file(serve, tmp_path):
    statefmt.save(fleet(2, units=3), tmp_path / "s.statefmt")
    assert (tmp_path / "s.statefmt").stat().st_size < 4096
    url = serve(functools.partial(Counting, directory=str(tmp_path))) + "/s.statefmt"
    statefmt.validate(url)
    assert list(statefmt.load(url, streams=["pump-1"]).stream_ids) == ["pump-1"]


def test_a_server_ignoring_range_never_sends_a_large_object_whole(serve, tmp_path):
    statefmt.save(fleet(3000, units=600), tmp_path / "big.statefmt")  # ~ 36 MB
    size = (tmp_path / "big.statefmt").stat().st_size
    Counting.sent[0] = 0
    url = serve(functools.partial(Counting, directory=str(tmp_path))) + "/big.statefmt"
    with pytest.raises(StateUnreadableError, match="ignores Range requests"):
        statefmt.load(url, streams=["pump-1"])
    time.sleep(0.5)
    assert Counting.sent[0] < size  # the reader hung up: http.server's copy fails part way


def test_s3_without_credentials_or_endpoint_is_one_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    for extra in ({}, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}):
        result = subprocess.run([sys.executable, "-m", "statefmt", "validate", "s3://bucket/s.statefmt"],
                                capture_output=True, text=True, timeout=120, env={**env, **extra})
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith("s3://bucket/s.statefmt: ") and len(result.stderr.splitlines()) == 1


def test_an_s3_object_replaced_mid_read_is_said_to_have_changed(s3_bucket, monkeypatch):
    server, bucket = s3_bucket
    options = server.fsspec_options
    url = f"s3://{bucket}/s.statefmt"
    statefmt.save(fleet(50, units=8), url, storage_options=options)
    real = _container.Container.__init__

    def then_replace(self, source):
        real(self, source)  # the header read: now the object is replaced by one of the same layout
        layers = [statefmt.LayerState(layer.name, layer.kind, **{name: layer[name] + 1 for name in layer.state_names})
                  for layer in fleet(50, units=8).layers]
        statefmt.save(statefmt.StateSet(layers, stream_ids=[f"pump-{i}" for i in range(50)]), url,
                      storage_options=options)
    monkeypatch.setattr(_container.Container, "__init__", then_replace)
    with pytest.raises(StateError, match="changed while it was read"):
        statefmt.load(url, storage_options=options)
