"""The core stays transport-, storage- and engine-free (style.md: one core, thin edges)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "service" / "core"
FORBIDDEN = ("fastapi", "starlette", "grpc", "psycopg", "psycopg_pool", "yoyo", "vllm", "httpx", "uvicorn", "torch")


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_core_imports_no_transport_sql_or_engine():
    files = sorted(CORE.rglob("*.py"))
    assert files, "service/core has no modules"
    offenders = [
        f"{f.relative_to(CORE.parent.parent)} imports {mod}"
        for f in files
        for mod in imported_modules(f)
        if mod.split(".")[0] in FORBIDDEN or mod.startswith(("service.api", "service.store"))
    ]
    assert offenders == []
