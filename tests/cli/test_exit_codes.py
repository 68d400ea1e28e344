"""The pipeline contract, command by command: one exit code per kind of outcome, and `--json` prints
exactly one JSON object on stdout whatever happens, with a non-null `code` on every failure.

    0  success                                   code null
    1  the data is invalid or does not fit       code: a reader check's code, "invalid", "mismatch",
       (diff: the files differ)                  "different"
    2  usage error                               code "usage"
    3  the input cannot be read                  code "unreadable"

docs/reference/cli.md holds the same table.
"""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from builders import fleet, flip
from cli_check import assert_no_traceback
from click.testing import CliRunner

import statefmt
from statefmt.cli import main

VECTORS = Path(__file__).parents[2] / "spec" / "vectors"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    good, other, corrupt, bad_ids = root / "good.statefmt", root / "other.statefmt", root / "corrupt.statefmt", \
        root / "no_ids.statefmt"
    states = fleet(3, units=4)
    statefmt.save(states, good)
    statefmt.save(fleet(4, units=4), other)
    statefmt.save(states, corrupt)
    flip(corrupt, "layers.0.h", 3)
    statefmt.save(fleet(3, units=4, ids=False), bad_ids)
    signature, wrong = root / "sig.json", root / "wrong.json"
    signature.write_text(statefmt.StateSignature.of(states, batch_size=None).to_json())
    wrong.write_text(statefmt.StateSignature([statefmt.LayerSignature("gru", 5)]).to_json())
    store = root / "fleet.lance"
    assert CliRunner().invoke(main, ["store", "import", str(store), str(good)]).exit_code == 0
    foreign = {"hdf5": b"\x89HDF\r\n\x1a\n" + bytes(100), "pickle": pickle.dumps({"h": list(range(50))}),
               "npy": b"\x93NUMPY\x01\x00" + bytes(100)}
    for kind, raw in foreign.items():
        (root / f"x.{kind}").write_bytes(raw)
    with zipfile.ZipFile(root / "x.zip", "w") as archive:
        archive.writestr("a.txt", "hello" * 30)
    np.savez(root / "x.npz", a=np.zeros(30))
    return {"good": good, "other": other, "corrupt": corrupt, "no_ids": bad_ids,
            "nan": VECTORS / "nan.statefmt", "v1": VECTORS / "1.0" / "gru_weights.statefmt",
            "v1_corrupt": VECTORS / "1.0" / "checksum.statefmt", "sig": signature,
            "wrong": wrong, "store": store, "missing": root / "missing.statefmt", "dir": root,
            "out": root / "out", "nowhere": root / "no" / "such" / "dir" / "x.statefmt", "root": root}


# (command line with {names} from `world`, exit code, JSON code or None)
CASES = [
    ("validate {good}", 0, None),
    ("validate {corrupt}", 1, "checksum"),
    ("validate {nan}", 1, "nonfinite"),
    ("validate {good} --against {wrong}", 1, "mismatch"),
    ("validate {missing}", 3, "unreadable"),
    ("validate {dir}", 3, "unreadable"),
    ("validate {good} --against {missing}", 3, "unreadable"),
    ("validate {root}/x.hdf5", 1, "container"),
    ("validate", 2, "usage"),
    ("inspect {good}", 0, None),
    ("inspect {corrupt}", 1, "checksum"),
    ("inspect {nan}", 1, "nonfinite"),
    ("inspect {missing}", 3, "unreadable"),
    ("inspect {good} --bogus", 2, "usage"),
    ("diff {good} {good}", 0, None),
    ("diff {good} {other}", 1, "different"),
    ("diff {good} {corrupt}", 1, "checksum"),
    ("diff {good} {missing}", 3, "unreadable"),
    ("diff {good} {good} --atol nan", 2, "usage"),
    ("upgrade {v1} -o {out}", 0, None),
    ("upgrade {v1_corrupt} -o {out}", 1, "checksum"),
    ("upgrade {good} -o {out}", 1, "invalid"),
    ("upgrade {missing}", 3, "unreadable"),
    ("upgrade {v1} -o {nowhere}", 3, "unreadable"),
    ("upgrade", 2, "usage"),
    ("store info {store}", 0, None),
    ("store info {missing}", 3, "unreadable"),
    ("store info", 2, "usage"),
    ("store versions {store}", 0, None),
    ("store versions {missing}", 3, "unreadable"),
    ("store get {store} pump-1 -o {out}", 0, None),
    ("store get {store} nobody -o {out}", 1, "mismatch"),
    ("store get {missing} pump-1 -o {out}", 3, "unreadable"),
    ("store get {store} pump-1", 2, "usage"),
    ("store put {store} {good}", 0, None),
    ("store put {store} {no_ids}", 1, "mismatch"),
    ("store put {store} {missing}", 3, "unreadable"),
    ("store import {store} {good}", 0, None),
    ("store import {store} {missing}", 3, "unreadable"),
    ("store import {store} {corrupt}", 1, "checksum"),
    ("store export {store} {out}", 0, None),
    ("store export {missing} {out}", 3, "unreadable"),
    ("store compact {store}", 0, None),
    ("store compact {missing}", 3, "unreadable"),
    ("store create {root}/new.lance --signature {missing}", 3, "unreadable"),
    ("store create {root}/new.lance", 2, "usage"),
]


@pytest.mark.parametrize(("line", "exit_code", "code"), CASES, ids=[case[0] for case in CASES])
def test_every_command_keeps_the_exit_code_and_json_contract(world, line, exit_code, code):
    args = [part.format(**world) for part in line.split()]
    plain = CliRunner().invoke(main, args)
    assert_no_traceback(plain)
    assert plain.exit_code == exit_code, plain.output
    if exit_code:
        assert plain.output.strip(), "a failure says why"
    result = CliRunner().invoke(main, [*args, "--json"])
    assert_no_traceback(result)
    assert result.exit_code == exit_code, result.output
    verdict = json.loads(result.stdout)  # exactly one JSON value: json.loads refuses anything after it
    assert isinstance(verdict, dict) and verdict.get("code") == code, result.stdout


@pytest.mark.parametrize(("kind", "name"), [("hdf5", "an HDF5 file"), ("pickle", "a Python pickle"),
                                            ("zip", "a zip archive"), ("npz", "a zip archive"),
                                            ("npy", "a NumPy .npy file")])
def test_a_file_of_another_format_is_named_as_such(world, kind, name):
    result = CliRunner().invoke(main, ["validate", str(world["root"] / f"x.{kind}")])
    assert result.exit_code == 1 and f"{name}, not a statefmt file" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("error, exit_code, code", [
    (statefmt.StoreNotFoundError("no store here"), 3, "unreadable"),
    (statefmt.StoreConflictError("other writers kept winning"), 3, "conflict"),
    (statefmt.StoreMemoryError("Lance ran out of memory"), 1, "too-large"),
])
def test_the_store_errors_have_their_place_in_the_table(error, exit_code, code):
    """A store error is told by its type: a conflict cannot be provoked here without a mock, so its row is
    checked where the table is applied."""
    from statefmt.cli._common import outcome

    assert outcome(error) == (exit_code, code)
