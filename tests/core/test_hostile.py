"""Hostile and odd input at the command line: special files, odd signatures, control characters, lone
surrogates in a 1.0 file. Each gets a one-line error naming the file, an exit code, no traceback, and
bounded time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_states
from click.testing import CliRunner

import statefmt
from statefmt import LayerState, StateSet
from statefmt._document import CHECKSUM_KEY, text_checksum
from statefmt.cli import main

VECTORS = Path(__file__).parents[2] / "spec" / "vectors"


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def statefmt_command(*args, timeout=60):
    """The real command in a subprocess, with a deadline: a hang fails the test instead of the run."""
    return subprocess.run([sys.executable, "-m", "statefmt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    return path


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["validate", "inspect", "diff", "upgrade"])
def test_no_command_blocks_on_a_fifo(command, fifo, state_file):
    args = [command, state_file, fifo] if command == "diff" else [command, fifo]
    result = statefmt_command(*args)
    assert result.returncode == 3  # the input cannot be read
    assert result.stderr == f"{fifo}: is a FIFO (named pipe), not a regular file\n"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused_by_name(device, state_file):
    for args in (["validate", device], ["validate", state_file, "--against", device]):
        result = statefmt_command(*args)
        assert result.returncode == 3 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"{device}: ") and "not a regular file" in result.stderr
        assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{", "not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, "not a statefmt signature"),
    (b"{" * 3, "not a statefmt signature"),
])
def test_odd_signature_files(tmp_path, state_file, content, message):
    signature = tmp_path / "sig.json"
    signature.write_bytes(content)
    result = statefmt_command("validate", state_file, "--against", signature)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{signature}: ") and message in result.stderr


def test_a_signature_file_larger_than_the_cap_is_refused_unread(tmp_path, state_file):
    signature = tmp_path / "sig.json"
    with open(signature, "wb") as handle:
        handle.truncate(64 * 2**20)  # sparse: costs no disk
    result = statefmt_command("validate", state_file, "--against", signature)
    assert result.returncode == 1 and "more than the 16,777,216 allowed" in result.stderr


def test_control_characters_from_a_file_never_reach_the_terminal_raw(tmp_path):
    hostile = "evil\n/forged: valid\x1b]0;title\x07\r\u202e"
    path = tmp_path / "s.statefmt"
    statefmt.save(StateSet([LayerState(hostile, "gru", h=[[[0.5]]])], stream_ids=[hostile]), path,
                  metadata={"created_by": hostile})
    for command in ("inspect", "validate"):
        result = statefmt_command(command, path)
        assert result.returncode == 0
        for text in (result.stdout, result.stderr):
            assert not any(char in text for char in "\x1b\x07\r\u202e")
        assert "/forged: valid" not in result.stdout.splitlines()
    assert "\\x1b" in statefmt_command("inspect", path).stdout


def _v1_with(tmp_path, change) -> Path:
    """A copy of the 1.0 LSTM vector with its document changed and its checksum kept consistent."""
    data = (VECTORS / "1.0" / "lstm.statefmt").read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    document = json.loads(header["__metadata__"]["statefmt"])
    change(document)
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))  # ensure_ascii: "\ud800" stays escaped
    header["__metadata__"] = {"statefmt": text, CHECKSUM_KEY: text_checksum(text)}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = tmp_path / "v1.statefmt"
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length:])
    return path


def test_a_lone_surrogate_in_a_1_0_file_is_refused_as_no_unicode_text(tmp_path):
    """I-JSON forbids lone surrogates: "\\ud800" decodes to no Unicode text, which no terminal, JSON
    encoder or 2.0 writer can take. Refused at step 2, in one line, by every command."""
    path = _v1_with(tmp_path, lambda d: d.update(stream_ids=["\ud800", "ok"]))
    with pytest.raises(statefmt.StateFormatError, match="lone surrogate") as error:
        statefmt.load(path)
    assert (error.value.step, error.value.code) == (2, "metadata")
    for command in (["inspect"], ["inspect", "--json"], ["validate"], ["upgrade"]):
        result = statefmt_command(*command, path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "lone surrogate" in result.stderr


def test_a_float_batch_size_in_a_1_0_file_is_refused_before_any_row_read(tmp_path):
    path = _v1_with(tmp_path, lambda d: d.update(batch_size=2.0))
    with pytest.raises(statefmt.StateFormatError, match=r"batch_size: expected an integer, found 2\.0"):
        statefmt.load(path, streams=[1])


def test_validate_against_casts_by_default_and_is_exact_with_strict(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(dtype="float16"), path)
    signature = tmp_path / "sig.json"
    signature.write_text(statefmt.StateSignature.of(make_states(), dtype="float32").to_json())
    assert run("validate", path, "--against", signature).exit_code == 0
    strict = run("validate", path, "--against", signature, "--strict")
    assert strict.exit_code == 1 and "dtype: expected float32, found float16" in strict.stderr


def test_json_verdicts_carry_the_step_and_code(tmp_path):
    result = run("validate", "--json", VECTORS / "checksum.statefmt")
    verdict = json.loads(result.stdout)
    assert result.exit_code == 1 and (verdict["step"], verdict["code"]) == (8, "checksum")
