"""examples/fleet.py as a test: a streaming job over a fleet, its state in a store, on a local directory and on S3.

The example itself checks every stream's output against an uninterrupted per-stream run (within 1e-5) and
that a zero-state start differs; here we also check the figures it returns, and run its command line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lance")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.py"


@pytest.fixture(scope="module")
def fleet_example():
    spec = importlib.util.spec_from_file_location("fleet_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(figures, streams):
    assert figures["max_output_error"] <= 1e-5 and figures["max_state_error"] <= 1e-5
    assert figures["min_zero_state_gap"] > 1e-3
    assert figures["resumed"] > 0.3 * streams  # many streams carried their state across ticks


def test_fleet_on_a_local_store(tmp_path, fleet_example):
    _check(fleet_example.run(str(tmp_path / "fleet"), streams=1500, ticks=7, verbose=False), 1500)


def test_fleet_on_s3(s3_bucket, fleet_example):
    server, bucket = s3_bucket
    figures = fleet_example.run(f"s3://{bucket}/fleet", storage_options=server.lance_options, streams=1000,
                                ticks=6, verbose=False)
    _check(figures, 1000)


def test_the_command_line_runs_and_reports(tmp_path, fleet_example, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fleet.py", str(tmp_path / "fleet"), "--streams", "300", "--ticks", "4"])
    fleet_example.main()
    printed = capsys.readouterr().out
    assert "max |output - uninterrupted run|" in printed and "tick  3:" in printed


@pytest.mark.slow
def test_a_larger_fleet(tmp_path, fleet_example):
    _check(fleet_example.run(str(tmp_path / "fleet"), streams=30_000, ticks=20, fraction=0.1, verbose=False),
           30_000)
