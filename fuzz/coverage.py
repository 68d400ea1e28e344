"""Coverage-guided fuzzing with atheris (libFuzzer): `python -m fuzz.coverage -max_total_time=300`.

The seeded loop in `python -m fuzz` mutates with statefmt's structure in mind; this run lets
libFuzzer find inputs that reach new lines of statefmt's reader. Seeds: the 2.0 files of
`fuzz.mutations.seeds` (saved by statefmt, re-blocked to 4 KiB blocks, the 2.0 vectors) and every
conformance vector, 2.0 and 1.0, valid or not. Only the public API is called (`read`,
`validate`, `load`), and no error text is matched. Every input must:

- be read (as a state or as weights) and pass `validate` on disk and in memory, or be refused
  by both `read` and `validate` with a StateFormatError that names the spec's step and code,
  in one-line problems;
- once read, give through `load(streams=...)` exactly the rows of the whole read, ids included;
- raise no other exception and no warning.

Anything else is a crash that libFuzzer reports and saves for replay
(`python -m fuzz.coverage crash-<hash>`). A long run keeps its corpus, each input bounded in time:
`python -m fuzz.coverage CORPUS_DIR -max_total_time=350 -timeout=10 -print_final_stats=1`.
Needs `pip install atheris`. The scratch folder (seed corpus, input file) is left in $TMPDIR:
libFuzzer exits without running Python's exit handlers.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris
import numpy as np

with atheris.instrument_imports(include=["statefmt"]):
    import statefmt
    from statefmt import StateFormatError, StateMismatchError, StateSet

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
STEPS = {1: "container", 2: "metadata", 3: "version", 4: "metadata-checksum", 5: "schema", 6: "semantics",
         7: "tensors", 8: "checksum", 9: "nonfinite", 10: "stream-index"}  # the spec's reader checks
_scratch = Path(tempfile.mkdtemp(prefix="statefmt-atheris-"))
_input = _scratch / "input.statefmt"


def refusal(action: Callable[[], Any], errors: tuple[type[Exception], ...] = (StateFormatError,)
            ) -> tuple[Any, Exception | None]:
    """What `action` returns, or the error (of `errors`) it raised, checked to be one line per problem."""
    try:
        return action(), None
    except errors as error:
        assert error.problems and all(p and "\n" not in p for p in error.problems), f"not one line each: {error!r}"
        return None, error


def file_refusal(error: Exception | None) -> None:
    if error is not None:
        assert isinstance(error, StateFormatError)
        assert error.step in STEPS and error.code == STEPS[error.step], f"no spec step and code: {error!r}"


def test_one_input(data: bytes) -> None:
    _input.unlink(missing_ok=True)  # a new file, not a truncated one: ext4 flushes on truncate-and-rewrite (3 ms)
    _input.write_bytes(data)
    got, read_refused = refusal(lambda: statefmt.read(_input))
    _, validate_refused = refusal(lambda: statefmt.validate(_input))
    file_refusal(read_refused)
    file_refusal(validate_refused)
    assert (read_refused is None) == (validate_refused is None), (
        f"read and validate disagree: read {read_refused!r}, validate {validate_refused!r}")
    if read_refused is not None and read_refused.step < 8:  # type: ignore[attr-defined]
        return  # refused before any tensor byte is read: a read of some rows opens the file through the same checks
    keys: list[str | int] = [0]
    if got is not None:
        statefmt.validate(got)  # what a read returns is valid in memory too
        if isinstance(got, StateSet) and got.batch_size:
            keys = [got.batch_size - 1] + ([got.stream_ids[0]] if got.stream_ids and got.batch_size > 1 else [])
    rows, _ = refusal(lambda: statefmt.load(_input, streams=keys), (StateFormatError, StateMismatchError))
    if rows is not None and isinstance(got, StateSet):  # the rows asked for, exactly: never another stream's
        picked = [got.batch_size - 1, 0] if len(keys) > 1 else [k % got.batch_size for k in keys if isinstance(k, int)]
        assert rows.stream_ids == (None if got.stream_ids is None else tuple(got.stream_ids[k] for k in picked))
        for whole, part in zip(got.layers, rows.layers, strict=True):
            for name in whole.state_names:
                whole_rows = np.take(np.asarray(whole[name]), picked, axis=whole.batch_axis)
                assert whole_rows.tobytes() == np.asarray(part[name]).tobytes()
    elif rows is not None and got is not None:
        raise AssertionError(f"load(streams={keys}) returned rows of a weights file")


def seed_corpus() -> Path:
    from fuzz.mutations import seeds  # after instrumentation: it imports statefmt too

    corpus = _scratch / "corpus"
    corpus.mkdir()
    for seed in seeds(_scratch):
        if not seed.name.startswith("v1.0/"):
            (corpus / seed.name.replace("/", "-")).write_bytes(seed.data)
    for vector in sorted(VECTORS.glob("*.statefmt")) + sorted(VECTORS.glob("1.0/*.statefmt")):
        (corpus / f"vector-{vector.parent.name}-{vector.name}").write_bytes(vector.read_bytes())
    return corpus


def main() -> None:
    arguments = list(sys.argv)
    inputs = [argument for argument in arguments[1:] if not argument.startswith("-")]
    if all(Path(argument).is_dir() for argument in inputs):  # not a crash file to replay: add the seeds
        arguments.append(str(seed_corpus()))  # after a corpus folder given first, which libFuzzer grows
    warnings.simplefilter("error")  # a warning on a bad file is a finding too: users would see it
    atheris.Setup(arguments, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
