"""The package's shape: no import cycles (lazy imports included), PyTorch only where it belongs,
functions and files small enough to read in one sitting."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installed package name -> folder in the repository (pyproject's package-dir mapping).
FOLDERS = {"pthnet_jax": REPO / "pthnet_jax", "pthnet_jax.convert": REPO / "convert",
           "pthnet_jax.configs": REPO / "configs"}
# Modules allowed to import torch: the benchmarks (a PyTorch baseline) and nothing else in the library.
TORCH_ALLOWED = ("pthnet_jax.benchmarks.",)
MAX_FUNCTION_LINES = 95
MAX_FILE_LINES = 360


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            if package == "pthnet_jax" and parts and parts[0] in ("convert", "configs"):
                continue
            modules[".".join([package, *parts])] = path
    return modules


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that `module` imports, at the top or inside functions."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages work; a cycle through a
    # module that imports the package back (e.g. `from pthnet_jax import load_model`) is not.
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_torch_only_in_benchmarks_and_export():
    offenders = []
    for name, path in _modules().items():
        if name.startswith(TORCH_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
                offenders.append(f"{path}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
                offenders.append(f"{path}:{node.lineno}")
    assert not offenders, f"torch imported outside the benchmarks: {offenders}"


def test_functions_and_files_are_short():
    long_functions, long_files = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    assert not long_functions and not long_files, "\n".join(long_functions + long_files)


# The harness that serves every model family, and what belongs to one family (PTH-Net's modules that
# still live at the top level). The harness reaches a family only through `task.FAMILIES`.
GENERIC = ("train", "epochs", "steps", "checkpoint", "run_checkpoints", "evaluation", "config_check",
           "reporting", "workdir", "task", "plan")
FAMILY_MODULES = ("pthnet_jax.families", "pthnet_jax.models.pthnet", "pthnet_jax.losses", "pthnet_jax.pyramid",
                  "pthnet_jax.data", "pthnet_jax.inference")


def _family_imports(graph: dict[str, set[str]]) -> list[str]:
    def of_a_family(name):
        return any(name == f or name.startswith(f + ".") for f in FAMILY_MODULES)

    return [f"{module} imports {target}" for module in (f"pthnet_jax.{g}" for g in GENERIC)
            for target in sorted(graph.get(module, ())) if of_a_family(target)]


def test_the_harness_imports_no_family():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert all(f"pthnet_jax.{g}" in graph for g in GENERIC)
    offenders = _family_imports(graph)
    assert not offenders, "generic modules must reach a family only through task.FAMILIES:\n" + "\n".join(offenders)
    # The check can fail: a planted import of PTH-Net's model is found.
    assert _family_imports({**graph, "pthnet_jax.steps": {"pthnet_jax.models.pthnet"}}) == [
        "pthnet_jax.steps imports pthnet_jax.models.pthnet"]


def test_the_checker_sees_cycles_and_long_functions(tmp_path):
    """The checks above can fail: a planted cycle and a planted long function are found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from pkg.a import f\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    assert _imports("pkg.a", package / "a.py", known) == {"pkg.b"}
    assert _imports("pkg.b", package / "b.py", known) == {"pkg.a"}
    body = "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    node = ast.parse(body).body[0]
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
