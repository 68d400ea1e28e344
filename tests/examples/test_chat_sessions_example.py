"""examples/chat_sessions.py: a restarted chat server answers every conversation from its saved state exactly as
an uninterrupted run would; a server that forgot them does not."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def test_a_restarted_server_resumes_every_conversation(tmp_path):
    path = Path(__file__).parents[2] / "examples" / "chat_sessions.py"
    spec = importlib.util.spec_from_file_location("chat_sessions", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    result = example.main(tmp_path)

    assert result["sessions_resumed"] == 3
    assert result["resumed_error"] < 1e-5
    assert result["fresh_error"] > 1e-2
    assert len(list((tmp_path / "sessions").glob("*.statefmt"))) == 3
