"""Importing an adapter imports no framework; calling one whose framework is missing names the extra."""

import subprocess
import sys

import pytest

ALL_FRAMEWORKS = ("keras", "tensorflow", "torch", "jax", "flax", "onnx", "onnxruntime", "transformers",
                  "recurrentgemma", "rwkv", "keras_hub")
ADAPTERS = ("keras", "torch", "flax", "onnx", "transformers", "recurrentgemma", "rwkv", "keras_hub")


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_importing_the_adapter_loads_no_framework(adapter):
    result = run_python(f"import sys, statefmt.adapters.{adapter}\n"
                        f"print(sorted(m for m in {ALL_FRAMEWORKS!r} if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_missing_framework_names_the_extra(adapter):
    result = run_python(f"import sys\nsys.modules[{adapter!r}] = None\nfrom statefmt.adapters import {adapter}\n"
                        f"try:\n    {adapter}.signature(object())\nexcept ImportError as error:\n    print(error)")
    assert result.returncode == 0, result.stderr
    assert f'pip install "statefmt[{adapter}]"' in result.stdout
