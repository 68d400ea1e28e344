"""The CLI as tests drive it: `statefmt validate FILE --against SIG.json` on what a model expects, and a clean exit."""

from click.testing import CliRunner

import statefmt
from statefmt.cli import main


def assert_cli_reports(states, signature, problems, folder):
    """Save `states` and `signature` in `folder` and check that the CLI prints `problems`, one line
    each after the file's path, and exits 1; or prints "valid" and exits 0 when there are none."""
    path, sig = folder / "state.statefmt", folder / "sig.json"
    statefmt.save(states, path)
    sig.write_text(signature.to_json())
    result = CliRunner().invoke(main, ["validate", str(path), "--against", str(sig)])
    if problems:
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines() == [f"{path}: {problem}" for problem in problems], result.stderr
    else:
        assert (result.exit_code, result.stdout) == (0, f"{path}: valid\n"), result.output


def assert_no_traceback(result):
    """A CliRunner run that ended by a clean exit (a one-line error and a code), not by an uncaught exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
