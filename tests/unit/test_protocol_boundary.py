"""The shared contract's fence: the server imports nothing of the ``jaxinit`` package but
``jaxinit.protocol`` and the generated stubs, the core loads no client facade and no
transport, and there is no import cycle between the server's modules."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "jaxinit_server"
ALLOWED = ("jaxinit.protocol", "jaxinit.v1")


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, ``from x import y`` as ``x.y`` too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def test_server_imports_only_the_protocol_and_stubs_of_the_client_package() -> None:
    bad = []
    for path in sorted(SERVER.rglob("*.py")):
        for line, module in _imports(path):
            # "from jaxinit import protocol" names jaxinit and jaxinit.protocol: both fine.
            if module.split(".")[0] == "jaxinit" and module != "jaxinit" and not module.startswith(ALLOWED):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not bad, "\n".join(bad)


TRANSPORTS = ("grpc", "fastapi", "starlette", "uvicorn", "httpx", "pydantic_settings", "google.protobuf")


def _loaded_after(statement: str, bad: str) -> list[str]:
    """The modules ``bad`` (a Python expression over ``m``, a module name) picks out of what a
    fresh interpreter has loaded after running ``statement``."""
    code = f"import sys\n{statement}\nprint([m for m in sys.modules if {bad}])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return list(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def test_importing_the_server_core_loads_no_client_facade_or_transport() -> None:
    loaded = _loaded_after(
        "import jaxinit_server.core, jaxinit_server.core.engine",
        f"m.startswith('jaxinit.') and not m.startswith('jaxinit.protocol') or m.split('.')[0] in {TRANSPORTS!r}"
        " or m == 'google.protobuf'",
    )
    assert loaded == [], loaded


def test_the_protocol_imports_no_jax_and_no_transport() -> None:
    loaded = _loaded_after(
        "sys.modules['jax'] = None\nimport jaxinit.protocol",
        "m.startswith(('jaxlib', 'grpc', 'httpx', 'fastapi', 'jaxinit._')) or m == 'jaxinit.models'",
    )
    assert loaded == [], loaded


def test_the_client_imports_without_jax_or_server_transports() -> None:
    loaded = _loaded_after(
        "sys.modules['jax'] = None\nimport jaxinit\nc = jaxinit.Client('http://127.0.0.1:9')\nc.close()",
        "m.split('.')[0] in ('jaxlib', 'grpc', 'fastapi') and sys.modules[m] is not None",
    )
    assert loaded == [], loaded


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SERVER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_among_server_modules() -> None:
    """Every import, at module level or deferred inside a function (a deferral that dodges a
    cycle is still one). ``from pkg import submodule`` depends on the submodule; importing a
    module's own ancestor packages is how Python loads it, not a dependency."""
    modules = {_module_name(p): p for p in SERVER.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges |= subs if len(subs) == len(node.names) else {node.module, *subs}

        def ancestors(module: str) -> set[str]:
            return {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}

        # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are dependencies too,
        # but for the importer's own ancestors (already being initialised).
        edges |= {a for e in edges if e in modules for a in ancestors(e)}
        graph[name] = {e for e in edges if e in modules and e != name and e not in ancestors(name)}
    # A package imports its own submodules in __init__: an edge from a submodule to its package
    # is only a cycle if the package imports it back, which the search below finds like any other.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
