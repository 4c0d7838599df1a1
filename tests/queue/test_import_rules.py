"""The import direction of design.md 2, read from the source: cli -> services -> store; jobs -> memq.job."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(package: str) -> Iterator[tuple[str, str]]:
    """(importing module, imported module) for every import in the package, nested ones included."""
    for path in sorted((REPO / package).rglob("*.py")):
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                yield from ((module, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield from ((module, f"{node.module}.{alias.name}") for alias in node.names)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# below the store: plain facts and file primitives that every layer may use
FOUNDATION = ("memq.errors", "memq.files", "memq.lock", "memq.spec", "memq.host", "memq.paths")


def _layer(name: str) -> str:
    if _within(name, "memq.cli") or _within(name, "memq.__main__"):
        return "cli"
    if any(_within(name, module) for module in FOUNDATION):
        return "foundation"
    return "store" if _within(name, "memq.store") else "service"


def test_jobs_import_only_the_public_job_api() -> None:
    found = [(src, dst) for src, dst in _imports("jobs") if _within(dst, "memq") and not _within(dst, "memq.job")]
    assert found == []


def test_data_preparation_imports_neither_the_model_nor_evaluation() -> None:
    """jobs/data sits below jobs/mem and jobs/eval: they read what it prepares, never the reverse."""
    found = [(src, dst) for src, dst in _imports("jobs/data")
             if _within(dst, "jobs.mem") or _within(dst, "jobs.eval")]
    assert found == []


def test_memq_imports_flow_from_the_cli_through_services_to_the_store() -> None:
    allowed = {"cli": {"cli", "service", "store", "foundation"}, "service": {"service", "store", "foundation"},
               "store": {"store", "foundation"}, "foundation": {"foundation"}}
    found = [(src, dst) for src, dst in _imports("memq")
             if _within(dst, "memq") and _layer(dst) not in allowed[_layer(src)]]
    assert found == []


def test_memq_never_imports_the_science() -> None:
    assert [(src, dst) for src, dst in _imports("memq") if _within(dst, "jobs")] == []


def test_the_rules_see_nested_imports() -> None:
    """The checks read imports inside functions too (jobs import heavy modules lazily)."""
    nested = [(src, dst) for src, dst in _imports("jobs") if src == "jobs.cli.data" and _within(dst, "memq.job")]
    assert ("jobs.cli.data", "memq.job.command_root") in nested
