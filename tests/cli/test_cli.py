"""The `statefmt` command: verdicts, exit codes, and that it loads no ML framework."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import make_states, make_weights, one_gru
from cli_check import assert_no_traceback
from click.testing import CliRunner

import statefmt
from fuzz.mutations import Parts
from statefmt import LayerSignature, StateFormatError, StateSignature
from statefmt.cli import main

# What the core and `statefmt validate` must never load (ARCHITECTURE.md): frameworks, the store's engine, ONNX, Ray
FRAMEWORKS = ("tensorflow", "torch", "jax", "keras", "flax", "lance", "pyarrow", "onnx", "onnxruntime", "ray", "fsspec",
              "jsonschema", "safetensors", "transformers", "recurrentgemma", "rwkv", "keras_hub")


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    return str(path)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_validate_valid(state_file):
    result = run("validate", state_file)
    assert result.exit_code == 0 and result.output == f"{state_file}: valid\n"


def test_validate_json(state_file):
    result = run("validate", state_file, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == {"file": state_file, "valid": True, "problems": []}


def test_validate_against_a_signature(state_file, tmp_path):
    signature = tmp_path / "sig.json"
    signature.write_text(StateSignature([LayerSignature("gru", 5)], batch_size=4).to_json())
    result = run("validate", state_file, "--against", str(signature))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{state_file}: layer count: expected 1, found 3 (StateSet.select picks the layers a target holds)",
        f"{state_file}: layer 0 'enc': kind: expected gru, found lstm",
        f"{state_file}: layer 0 'enc': directions: expected 1, found 2",
        f"{state_file}: layer 0 'enc': proj_units: expected None, found 3",
    ]
    as_json = json.loads(run("validate", state_file, "--against", str(signature), "--json").output)
    assert as_json["valid"] is False and len(as_json["problems"]) == 4
    signature.write_text(StateSignature.of(make_states()).to_json())
    assert run("validate", state_file, "--against", str(signature)).exit_code == 0


def test_validate_bad_signature_file(state_file, tmp_path):
    signature = tmp_path / "sig.json"
    signature.write_text("{")
    result = run("validate", state_file, "--against", str(signature))
    assert result.exit_code == 1 and result.stderr.startswith(f"{signature}: not a statefmt signature")


@pytest.mark.parametrize("args", [["validate"], ["frobnicate"], ["diff", "--atol", "-1", "a", "b"]])
def test_usage_errors_exit_2(args):
    assert run(*args).exit_code == 2


def test_a_missing_file_is_invalid_input_named_in_one_line():
    result = run("validate", "missing.statefmt")
    assert result.exit_code == 1 and result.stderr == "missing.statefmt: no such file\n"


def test_inspect_text(state_file):
    result = run("inspect", state_file)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"{state_file}: state, 3 layer(s), batch 4"
    assert lines[1] == "streams: stream-0, stream-1, stream-2, stream-3"
    assert "  [0] 'enc' lstm units=5 proj_units=3 directions=2 float32" in lines
    assert any(line.strip().startswith("c  [2, 4, 5]") for line in lines)


def test_inspect_json_statistics(state_file):
    summary = json.loads(run("inspect", state_file, "--json").output)
    h = make_states()["enc"]["h"]
    stats = summary["layers"][0]["tensors"]["h"]
    assert stats["shape"] == [2, 4, 3] and stats["nonfinite"] == 0
    assert stats["min"] == pytest.approx(float(h.min())) and stats["std"] == pytest.approx(float(h.std()), rel=1e-6)
    assert summary["batch_size"] == 4 and summary["metadata"]["created_by"].startswith("statefmt ")


def test_inspect_shows_a_poisoned_state_and_fails():
    path = "spec/vectors/nan.statefmt"
    result = run("inspect", path)
    assert result.exit_code == 1
    assert "non-finite 1" in result.output
    assert result.stderr == f"{path}: layer 0 'encoder': h: 1 non-finite values (NaN or Inf)\n"


def test_inspect_weights(tmp_path):
    path = tmp_path / "w.statefmt"
    statefmt.save(make_weights(), path)
    result = run("inspect", str(path))
    assert result.exit_code == 0 and "[1] 'gru' gru units=3 input_size=4 directions=1 float32" in result.output


def test_diff(tmp_path, state_file):
    other = tmp_path / "other.statefmt"
    states = make_states()
    states["head"]["h"][0, 1, 1] += 0.25
    statefmt.save(states, other)
    same = run("diff", state_file, state_file)
    assert same.exit_code == 0 and same.output == "equal (atol 0)\n"
    different = run("diff", state_file, str(other))
    assert different.exit_code == 1
    assert different.output == "layer 2 'head': h: max abs difference 0.25 > atol 0\n"
    assert run("diff", state_file, str(other), "--atol", "0.3").exit_code == 0


def test_diff_structure(tmp_path, state_file):
    other = tmp_path / "other.statefmt"
    statefmt.save(make_states(batch=2).select([0, 1]), other)
    result = run("diff", state_file, str(other))
    assert result.exit_code == 1
    assert result.output.splitlines() == ["batch size: 4 vs 2", "stream_ids differ", "layer count: 3 vs 2"]


def test_diff_unreadable_file_exits_2(state_file):
    result = run("diff", state_file, "spec/vectors/truncated.statefmt")
    assert result.exit_code == 2 and "the file is cut short" in result.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "validate", "spec/vectors/empty.statefmt")
    assert result.exit_code == 1 and isinstance(result.exception, statefmt.StateFormatError)


def test_importing_statefmt_loads_no_framework():
    code = f"import sys, statefmt, statefmt.cli; print([m for m in {FRAMEWORKS!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_cli_validate_loads_no_framework(state_file):
    code = (
        "import sys\nfrom statefmt.cli import main\n"
        f"try:\n    main(['validate', {state_file!r}])\nexcept SystemExit as done:\n    assert done.code == 0\n"
        f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


def test_console_script_is_installed(state_file):
    script = f"{sys.prefix}/bin/statefmt"
    result = subprocess.run([script, "validate", state_file], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- odd values and odd names: exact verdicts, valid JSON, no warning, escaped text -----------------------------------

def test_diff_atol_nan_does_not_call_different_files_equal(tmp_path):
    statefmt.save(one_gru(np.zeros((1, 2, 3), "f4")), tmp_path / "a.statefmt")
    statefmt.save(one_gru(np.full((1, 2, 3), 5.0, "f4")), tmp_path / "b.statefmt")
    result = CliRunner().invoke(main, ["diff", str(tmp_path / "a.statefmt"), str(tmp_path / "b.statefmt"),
                                       "--atol", "nan"])
    assert_no_traceback(result)
    assert result.exit_code != 0, result.output
    assert "equal" not in result.stdout


def test_inspect_json_is_valid_json_for_a_finite_float64_state(tmp_path):
    path = tmp_path / "big.statefmt"
    statefmt.save(one_gru(np.full((1, 2, 3), 1e308, "f8")), path)
    statefmt.validate(path)  # a valid, finite file
    result = CliRunner().invoke(main, ["inspect", "--json", str(path)])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    json.loads(result.stdout, parse_constant=refuse)  # RFC 8259 has no NaN or Infinity


def test_upgrade_in_place_keeps_a_newer_minor_files_fields(tmp_path):
    import shutil
    from pathlib import Path

    from safetensors import safe_open

    vector = Path(__file__).parents[2] / "spec" / "vectors" / "future_minor.statefmt"
    path = tmp_path / "future.statefmt"
    shutil.copyfile(vector, path)
    result = CliRunner().invoke(main, ["upgrade", str(path)])
    assert_no_traceback(result)
    with safe_open(str(path), "np") as file:
        document = json.loads(file.metadata()["statefmt"])
    assert document["format_version"] == "2.7" and "future_field" in document, document


def test_the_command_line_shows_control_characters_escaped(tmp_path):
    """A layer name and a stream id holding a newline, an OSC escape and BEL: validate and inspect stay one
    verdict, exit 0, and print none of them raw (the fuzzer runs this check on 5% of its inputs)."""
    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    parts.document["layers"][0]["name"] = "enc\n\x1b]0;owned\x07\r"
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "control.statefmt"
    path.write_bytes(parts.bytes())
    assert statefmt.read(path).layers[0].name == "enc\n\x1b]0;owned\x07\r"
    _check_cli(path, valid=True)


def test_inspect_of_large_finite_values_shows_no_warning(tmp_path):
    """Found by the seeded run: inspect's std squared a large finite float64 (1e200) and warned of overflow."""
    import warnings

    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "mixed.statefmt"
    parts = Parts.of(vector.read_bytes())
    h = parts.array("layers.3.h").copy()  # float64
    h[0, 0, 0] = 1e200
    parts.put("layers.3.h", h, "F64")
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "large.statefmt"
    path.write_bytes(parts.bytes())
    assert statefmt.read(path).layers[3]["h"][0, 0, 0] == np.float64(1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_cli(path, valid=True)


def test_inspect_of_a_signaling_nan_shows_no_warning(tmp_path):
    import warnings

    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    h = parts.array("layers.0.h").copy()
    h.view(np.uint32)[0, 0, 0] = 0x7FA00000  # a signaling NaN: any arithmetic or cast raises FE_INVALID
    parts.put("layers.0.h", h, "F32")
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "snan.statefmt"
    path.write_bytes(parts.bytes())
    with pytest.raises(StateFormatError) as refused:
        statefmt.read(path)
    assert refused.value.step == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_cli(path, valid=False)


MODERN_VECTORS = sorted((Path(__file__).parents[2] / "spec" / "vectors").glob("kind_*.statefmt"))


@pytest.mark.parametrize("path", [p for p in MODERN_VECTORS if p.stem in {
    "kind_mamba2", "kind_attention_window", "kind_mlstm_no_conv", "kind_rwkv4"}], ids=lambda p: p.stem)
def test_inspect_diff_and_plot_show_the_modern_kinds_by_their_dims(path, tmp_path):
    shown = run("inspect", str(path))
    assert shown.exit_code == 0, shown.output
    layer = next(line for line in shown.output.splitlines() if line.startswith("  [0]"))
    assert f" {path.stem.split('_')[1]} " in layer and "units" not in layer and "=" in layer
    assert json.loads(run("inspect", "--json", str(path)).output)["layers"][0]["dims"]
    assert run("diff", str(path), str(path)).exit_code == 0
    other = run("diff", str(path), str(MODERN_VECTORS[0] if path != MODERN_VECTORS[0] else MODERN_VECTORS[1]))
    assert other.exit_code == 1 and ("kind:" in other.output or "dims:" in other.output)
    plotted = run("inspect", "--plot", str(tmp_path / "state.png"), str(path))
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "state.png").stat().st_size > 10_000
