"""The core stays transport-, storage- and engine-free (style.md: one core, thin edges)."""

import ast
import re
from pathlib import Path

import grimp

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


ROOT = CORE.parents[1]
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|LISTEN|NOTIFY|pg_advisory_\w+)\b")
MAX_FUNCTION_LINES = 50


def sources() -> list[Path]:
    """Every hand-written module of service/ and shards/ (the generated gRPC stubs excluded)."""
    files = sorted((ROOT / "service").rglob("*.py")) + sorted((ROOT / "shards").rglob("*.py"))
    return [f for f in files if "gen" not in f.relative_to(ROOT).parts]


def docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, kinds)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }


def test_sql_is_written_only_in_the_store():
    offenders = []
    for f in sources():
        if f.is_relative_to(ROOT / "service" / "store"):
            continue
        tree = ast.parse(f.read_text())
        docs = docstrings(tree)
        offenders += [
            f"{f.relative_to(ROOT)}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and SQL.search(n.value)
        ]
    assert offenders == []


def test_the_sql_check_sees_sql():
    tree = ast.parse('q = "SELECT id FROM t"\nlisten = f"LISTEN {channel}"\n')
    found = [
        n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and SQL.search(n.value)
    ]
    assert len(found) == 2


def test_no_function_is_longer_than_fifty_lines():
    long = [
        f"{f.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for f in sources()
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_module_level_mutable_context():
    """Dependencies reach the workflow's jobs through their job context, not module globals."""
    offenders = [
        f"{f.relative_to(ROOT)}:{n.lineno}"
        for f in sources()
        for n in ast.parse(f.read_text()).body
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "CONTEXT"
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        )
    ]
    assert offenders == []


def test_no_import_cycle_among_service_and_shards_modules():
    """Every import counts, function-local ones too (grimp reads them all): none may close a cycle."""
    graph = grimp.build_graph("service", "shards")
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the module graph is deep enough to exhaust the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                out.append(comp)
    return out


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert sorted(sorted(c) for c in strongly_connected(graph) if len(c) > 1) == [["p.a", "p.b", "p.c"]]
