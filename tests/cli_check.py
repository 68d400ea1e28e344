"""`statefmt validate FILE --against SIG.json`, as the adapters' tests run it on what a model expects."""

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
