"""examples/serve_onnx.py: a restarted ONNX Runtime server continues every stream exactly; a zero-state one does not."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


def test_a_restarted_server_continues_every_stream(tmp_path):
    path = Path(__file__).parents[2] / "examples" / "serve_onnx.py"
    spec = importlib.util.spec_from_file_location("serve_onnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    result = example.main(tmp_path)

    assert result["streams_continued"] >= 10
    assert result["restarted_error"] < 1e-5  # against one uninterrupted PyTorch run of each stream's history
    assert result["zero_state_error"] > 1e-2
    assert (tmp_path / "streams.lance").is_dir()
