"""Coverage-guided fuzzing with atheris (libFuzzer): `python -m fuzz.coverage -max_total_time=300`.

The seeded loop in `python -m fuzz` mutates with statefmt's structure in mind; this run lets
libFuzzer find inputs that reach new lines of statefmt's reader. Seeds: the valid states of
`fuzz.mutations` and the conformance vectors. Every input must either load (as a state or as
weights), and then pass `validate` in memory and on disk, or be refused by both `load` and
`validate` with a StateFormatError of one-line problems, with no warning. Anything else is a
crash that libFuzzer reports and saves for replay (`python -m fuzz.coverage crash-<hash>`).
Needs `pip install atheris`. The scratch folder (seed corpus, input file) is left in
$TMPDIR: libFuzzer exits without running Python's exit handlers.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["statefmt"]):
    import statefmt
    from statefmt import StateFormatError, StateSet, WeightSet

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
_scratch = Path(tempfile.mkdtemp(prefix="statefmt-atheris-"))
_input = _scratch / "input.statefmt"


def refusal(action) -> StateFormatError | None:
    try:
        action()
    except StateFormatError as error:
        assert error.problems and all(p and "\n" not in p for p in error.problems), f"not one line each: {error!r}"
        return error
    return None


def read(path: Path) -> StateSet | WeightSet:
    try:
        return statefmt.load(path)
    except StateFormatError as error:
        if "holds weights" not in str(error):
            raise
    return statefmt.load_weights(path)


def test_one_input(data: bytes) -> None:
    _input.write_bytes(data)
    loaded: list[StateSet | WeightSet] = []
    load_refused = refusal(lambda: loaded.append(read(_input)))
    validate_refused = refusal(lambda: statefmt.validate(_input))
    assert (load_refused is None) == (validate_refused is None), (
        f"load and validate disagree: load {load_refused!r}, validate {validate_refused!r}")
    if loaded:
        statefmt.validate(loaded[0])  # what a load returns is valid


def seed_corpus() -> Path:
    from fuzz.mutations import encode, seed_states  # after instrumentation: it imports statefmt too

    corpus = _scratch / "corpus"
    corpus.mkdir()
    for index, states in enumerate(seed_states()):
        encode(states, corpus / f"seed-{index}.statefmt")
    for vector in sorted(VECTORS.glob("*.statefmt")):
        (corpus / vector.name).write_bytes(vector.read_bytes())
    return corpus


def main() -> None:
    arguments = list(sys.argv)
    if not any(not argument.startswith("-") for argument in arguments[1:]):  # no corpus or crash file given
        arguments.append(str(seed_corpus()))
    warnings.simplefilter("error")  # a warning on a bad file is a finding too: users would see it
    atheris.Setup(arguments, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
