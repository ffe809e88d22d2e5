"""Benchmarks and scripts import only names the package has (they run by hand, so nothing else would notice)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def package_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from neuron_explainer... import name` in a file, at any depth."""
    return [
        (node.module, alias.name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neuron_explainer")
        for alias in node.names
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_package_name_a_benchmark_imports_exists(path: Path) -> None:
    missing = []
    for module, name in package_imports(path):
        found = importlib.import_module(module)
        if not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names the package no longer has: {missing}"


def test_the_check_finds_imports_inside_functions(tmp_path: Path) -> None:
    script = tmp_path / "b.py"
    script.write_text("def f():\n    from neuron_explainer.simulate.simulator import simulate\n")
    assert package_imports(script) == [("neuron_explainer.simulate.simulator", "simulate")]
    assert not hasattr(importlib.import_module("neuron_explainer.simulate.simulator"), "simulate")
