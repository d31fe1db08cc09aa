"""The README stays true: its settings table and its make targets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kerasrpc.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_configuration_table_lists_every_setting() -> None:
    documented = set(re.findall(r"\| `KERASRPC_([A-Z_]+)` \|", README))

    assert documented == {f.name.upper() for f in dataclasses.fields(Settings)}


def test_the_documented_defaults_are_the_real_ones() -> None:
    defaults = Settings()
    for name, default in re.findall(r"\| `KERASRPC_([A-Z_]+)` \| `([^`]*)` \|", README):
        value = getattr(defaults, name.lower())
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            assert str(value) == default, name


def test_every_make_target_the_readme_shows_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    shown = set(re.findall(r"^make ([a-z-]+)", README, flags=re.MULTILINE))

    assert shown
    for target in shown:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_every_benchmark_make_bench_runs_exists() -> None:
    import importlib.util

    from bench.run_all import BENCHMARKS

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-m bench.run_all" in makefile
    for module in BENCHMARKS:
        assert importlib.util.find_spec(module) is not None, module


def test_every_document_the_readme_links_exists() -> None:
    linked = re.findall(r"\]\(([^)#]+)\)", README)

    assert linked
    for path in linked:
        assert (ROOT / path).exists(), path
