import sys
import threading
from pathlib import Path

import pytest

# tests import the conformance vectors' writer as `generate` (spec/vectors), the fuzzers as `fuzz` (beside
# `tests/`), and their shared helpers (builders, reference, ...) by name
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spec" / "vectors"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from s3server import S3Server


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 at a free port, for the whole session; stopped after.

    It is moto's own WSGI application in moto's request handler, as `moto_server` runs it, with
    one addition: every request is logged (method, path, Range header) in `S3Server.requests`,
    so tests count what a client really sent.
    """
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    requests: list[tuple[str, str, str | None]] = []
    app = DomainDispatcherApplication(create_backend_app)

    def logged(environ, start_response):
        requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("HTTP_RANGE")))
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, logged, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield S3Server(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the session's S3 server: (server, bucket name)."""
    return s3_server, s3_server.new_bucket()
