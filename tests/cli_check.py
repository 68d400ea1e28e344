"""`statefmt validate FILE --against SIG.json`, as the adapters' tests run it on what a model expects."""

from click.testing import CliRunner

import statefmt
from statefmt.cli import main


def validate_against(states, signature, folder):
    """Save `states` and `signature` in `folder`, run the CLI on them; the file's path and click's result."""
    path, sig = folder / "state.statefmt", folder / "sig.json"
    statefmt.save(states, path)
    sig.write_text(signature.to_json())
    return path, CliRunner().invoke(main, ["validate", str(path), "--against", str(sig)])
