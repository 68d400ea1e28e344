"""Runs the examples in statefmt's docstrings as doctests, so that they cannot rot.

Each part's test parametrizes over its modules' docstrings (one test each, named by the docstring)
and hands `run` the namespace the examples use: files in a temporary folder, a state, a model.
No example may be skipped.
"""

import doctest
import importlib

import pytest

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def docstrings(*modules):
    """One pytest parameter per docstring that holds an example, in `modules`."""
    return [pytest.param(module, test.name, id=test.name)
            for module in modules for test in doctest.DocTestFinder().find(importlib.import_module(module))
            if test.examples]


def run(module, name, namespace):
    """Run the examples of docstring `name` in `module`, with `namespace` added to the module's globals."""
    test = next(test for test in doctest.DocTestFinder().find(importlib.import_module(module)) if test.name == name)
    skipped = [example.source for example in test.examples if example.options.get(doctest.SKIP)]
    assert not skipped, f"{name}: an example that is skipped can rot: {skipped}"
    test.globs.update(namespace)
    report = []
    result = doctest.DocTestRunner(optionflags=FLAGS).run(test, out=report.append)
    assert result.attempted and not result.failed, "".join(report)
