"""Files behind URLs: a real S3 server (moto's, on loopback) through s3fs, read by range requests only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import fleet, flip

import statefmt
from statefmt import StateFormatError


def _requests_of(server, action, *args, **kwargs):
    """What `action(*args, **kwargs)` returns, and the requests the S3 server received meanwhile."""
    before = len(server.requests)
    result = action(*args, **kwargs)
    return result, server.requests[before:]


@pytest.fixture
def s3(s3_bucket):
    server, bucket = s3_bucket
    return server, bucket, server.fsspec_options


def test_one_stream_by_id_costs_the_same_requests_whatever_the_file_size(s3):
    server, bucket, options = s3
    counts = {}
    for batch in (1_000, 100_000):
        url = f"s3://{bucket}/fleet-{batch}.statefmt"
        statefmt.save(fleet(batch, units=64), url, storage_options=options)
        row = batch - 17
        part, sent = _requests_of(server, statefmt.load, url, streams=[f"pump-{row}"], storage_options=options)
        assert part.stream_ids == (f"pump-{row}",) and part[0]["h"][0, 0, 0] == row
        assert all(method in ("GET", "HEAD") for method, _, _ in sent)
        assert all(range_ is not None for method, _, range_ in sent if method == "GET"), "never a whole-object GET"
        counts[batch] = len(sent)
    assert counts[1_000] == counts[100_000] <= 20, counts
    print(f"requests for one stream by id: {counts}")


def test_a_flipped_byte_in_a_row_is_caught_over_s3(s3, tmp_path, monkeypatch):
    _, bucket, options = s3
    monkeypatch.setattr(statefmt.api, "BLOCK_BYTES", 4096)
    local = tmp_path / "s.statefmt"
    statefmt.save(fleet(37), local)
    flip(local, "layers.0.h", 20 * 300 * 4 + 9)
    import fsspec

    fsspec.filesystem("s3", **options).put_file(str(local), f"{bucket}/s.statefmt")
    url = f"s3://{bucket}/s.statefmt"
    with pytest.raises(StateFormatError, match="do not match their checksum") as error:
        statefmt.load(url, streams=["pump-20"], storage_options=options)
    assert error.value.source == url
    assert statefmt.load(url, streams=["pump-30"], storage_options=options)[0]["h"][0, 0, 0] == 30


def test_a_save_to_s3_is_all_or_nothing(s3):
    server, bucket, options = s3
    url = f"s3://{bucket}/s.statefmt"
    statefmt.save(fleet(5, units=3), url, storage_options=options)
    poisoned = fleet(5, units=3)
    poisoned[0]["h"][0, 0, 1] = np.nan
    with pytest.raises(StateFormatError, match="non-finite"):
        statefmt.save(poisoned, url, storage_options=options)
    assert statefmt.load(url, storage_options=options).batch_size == 5  # the previous object, whole
    puts = [path for method, path, _ in server.requests if method == "PUT" and path == f"/{bucket}/s.statefmt"]
    assert len(puts) == 1, "the refused save sent nothing"


def test_the_cli_reads_s3_urls(s3, tmp_path):
    server, bucket, options = s3
    url = f"s3://{bucket}/s.statefmt"
    statefmt.save(fleet(5, units=3), url, storage_options=options)
    env = {**os.environ, "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for args, code in ((["validate", url], 0), (["inspect", url], 0), (["validate", url + ".missing"], 1)):
        result = subprocess.run([sys.executable, "-m", "statefmt", *args], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr


def test_a_server_that_never_answers_is_refused_in_bounded_time(monkeypatch):
    """An http server that accepts and stays silent: the read gives up after the timeout, with a one-line error."""
    import contextlib
    import socket
    import threading
    import time

    monkeypatch.setattr(statefmt._source, "HTTP_TIMEOUT", 1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held, stop = [], threading.Event()

    def hold():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the accept timed out: look at `stop` again
                held.append(listener.accept()[0])  # accept, read nothing, answer nothing

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/today.statefmt"
    started = time.monotonic()
    try:
        with pytest.raises(StateFormatError) as error:
            statefmt.validate(url)
        assert time.monotonic() - started < 30
        assert error.value.source == url and "\n" not in str(error.value)
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


# --- writing to object storage ----------------------------------------------------------------------------------------

def test_killed_upload_leaves_no_file_in_tmpdir(s3_bucket, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    server, bucket = s3_bucket
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = ("import json, sys, numpy as np, statefmt; from statefmt import LayerState, StateSet; "
            "h = np.zeros((1, 1024, 16384), 'f4'); "  # 64 MiB
            "statefmt.save(StateSet([LayerState('g', 'gru', h=h)]), sys.argv[1], "
            "storage_options=json.loads(sys.argv[2]))")
    for delay in (0.4, 0.8, 1.2, 1.6):  # the temporary has no name: nothing to watch for, so kill at moments
        child = subprocess.Popen([sys.executable, "-c", code, f"s3://{bucket}/big.statefmt",
                                  json.dumps(server.fsspec_options)], env={**os.environ, "TMPDIR": str(scratch)})
        try:
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(10)
    leftovers = [path for path in scratch.rglob("*") if path.is_file()]
    assert not leftovers, f"{sum(p.stat().st_size for p in leftovers)} bytes left in {leftovers}"


def test_upgrade_a_local_file_into_object_storage(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    local, url = tmp_path / "old.statefmt", f"s3://{bucket}/new.statefmt"
    local.write_bytes((Path(__file__).parents[2] / "spec" / "vectors" / "1.0" / "lstm.statefmt").read_bytes())
    expected = statefmt.load(local)[0]["h"]
    statefmt.upgrade(local, url, storage_options=server.fsspec_options)
    got = statefmt.load(url, storage_options=server.fsspec_options)
    np.testing.assert_array_equal(got[0]["h"], expected)
