"""The package's layering, checked from the source: no import circles (function-level imports included),
kernels/ imports nothing from eptk/, no module outside eptk/methods/ compares a method name to a string,
only eptk/runs.py and eptk/stats.py spell the names of the files they own, and `eptk --help` loads
neither transformers nor torch."""
import ast
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = {"eptk": ROOT / "eptk", "eptk.kernels": ROOT / "kernels", "eptk.cli": ROOT / "cli"}


def modules() -> dict[str, Path]:
    """module name -> file, for every module of eptk, eptk.kernels and eptk.cli."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> set[str]:
    """The eptk modules `name` imports anywhere in its body, resolved to modules (a name imported from a
    package is the submodule when one exists). A package that imports all of its modules through
    eptk.registry.import_modules imports each of them."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_modules":
            targets = [m for m in MODULES if m.rpartition(".")[0] == name]
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_no_import_circles():
    """Tarjan's strongly connected components: any component of more than one module is a circle."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_kernels_import_nothing_from_eptk():
    bad = {name: sorted(t for t in targets if not t.startswith("eptk.kernels"))
           for name, targets in GRAPH.items() if name.startswith("eptk.kernels")}
    assert not any(bad.values()), bad


def test_linalg_is_a_leaf():
    assert GRAPH["eptk.linalg"] == set()


def string_constants(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in string_constants(e)]
    return []


def test_only_eptk_methods_compares_method_names():
    """A method's behaviour lives in its class: elsewhere, `method == "deep"` (or `in ("deep", "prefix")`)
    is a dispatch that a new method would have to find and extend."""
    from eptk.methods import METHODS
    offences = []
    for module, path in MODULES.items():
        if module.startswith("eptk.methods") or module.startswith("eptk.kernels"):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            constants = {s for side in sides for s in string_constants(side)}
            others = " ".join(ast.get_source_segment(source, side) or "" for side in sides)
            hits = constants & set(METHODS) or (constants & {"none"} if "method" in others else set())
            if hits:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.get_source_segment(source, node)}")
    assert not offences, "\n".join(offences)


def test_run_and_statistics_file_names_have_one_owner():
    owned = {"eptk.runs": ("config.json", "prior.safetensors", "posterior.safetensors", "metrics.jsonl",
                           "eval.json", "state.json", "state.safetensors", "parameters.safetensors"),
             "eptk.stats": ("stats.safetensors", "meta.json")}
    offences = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                # a file name used as a path (prose in docstrings and messages may mention the files)
                parts = set(node.value.strip().split("/"))
                for owner, names in owned.items():
                    # eptk.models and eptk.packaged read a Hugging Face model folder's own config.json, not a run's
                    if module not in (owner, "eptk.models", "eptk.packaged") and parts & set(names):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r} (owner {owner})")
    assert not offences, "\n".join(offences)


def probe(code: str) -> str:
    """stdout of `code` run in a fresh interpreter (which modules a command or an import loads)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_loads_neither_transformers_nor_torch():
    t0 = time.perf_counter()
    stdout = probe("import sys\nfrom eptk.cli.main import main\nmain(['--help'])\n"
                   "print('LOADED', 'transformers' in sys.modules, 'torch' in sys.modules)")
    print(f"eptk --help: {time.perf_counter() - t0:.2f} s in a fresh interpreter")
    assert "LOADED False False" in stdout, stdout


def test_priors_command_does_not_load_transformers():
    stdout = probe("import sys\nfrom eptk.cli.main import main\nmain(['priors'])\nprint('LOADED', 'transformers' in sys.modules)")
    assert "region:new" in stdout and "LOADED False" in stdout, stdout


def test_tune_help_lists_every_method_and_its_options():
    """`eptk tune --help` lists each registered method with its declared options (read when the help is shown)."""
    from eptk.methods import METHODS
    from eptk.options import describe
    stdout = probe("import os\nos.environ['COLUMNS'] = '2000'\nfrom eptk.cli.main import main\nmain(['tune', '--help'])")
    for name, cls in METHODS.items():
        line = next((l for l in stdout.splitlines() if l.strip().startswith(f"{name}:")), "")
        assert line, f"--method {name} missing from eptk tune --help"
        assert all(flag in line for flag, _ in describe(cls.Options)), line


def test_importing_the_library_loads_no_transformers():
    """transformers (and the Triton it imports) load when a model is loaded or prompted, not on import:
    the kernel tests bind Triton to its interpreter before first importing it."""
    stdout = probe("import sys\nimport eptk.analysis, eptk.methods, eptk.priors, eptk.prompts, eptk.train, eptk.sweep\n"
                   "print('LOADED', 'transformers' in sys.modules)")
    assert "LOADED False" in stdout, stdout


# ---- the layer table of docs/ARCHITECTURE.md ------------------------------------------------------------

def layer_table() -> list[tuple[str, set[str], str]]:
    """(layer, its modules, its "may import" cell) per row of the table, bottom layer first. A module is a
    backticked name in the modules cell that is one (`errors`, `eptk.kernels`) or a package (`families/`, with
    every module in it); other backticked words there (`TensorSpec`) name no module and are skipped."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| layer")
            and not line.startswith("|---")]
    table = []
    for row in rows:
        layer, cell, may = [c.strip() for c in row.strip("|").split("|")][:3]
        names = set()
        for word in re.findall(r"`([^`]+)`", cell):
            if word == "eptk":  # the package itself (its public names), in no layer
                continue
            name = word.rstrip("/")
            name = name if name.startswith("eptk") else f"eptk.{name}"
            if word.endswith("/"):
                names |= {m for m in MODULES if m == name or m.startswith(name + ".")}
            elif name in MODULES:
                names.add(name)
        table.append((layer, names, may))
    return table


def allowed_layers(table, i: int) -> set[str]:
    """The layers row `i` may import: its own, those its "may import" cell names and what those may import, and
    every layer below it for "everything" / "downward" (the table lists the bottom layer first)."""
    layer, _, may = table[i]
    below = [t[0] for t in table[:i]]
    if "everything" in may or "downward" in may:
        return {layer, *below}
    named = [j for j, name in enumerate(below) if name in may]
    return {layer}.union(*(allowed_layers(table, j) for j in named))  # what a named layer may import, too


# Function-level imports upward that the table itself states: `config.validate()` asks the method and prior
# registries when it runs, `TuneConfig.from_run` reads a run's config.json through `runs`, `portable_paths` the
# packaged models' names.
STATED_EXCEPTIONS = {"eptk.config": {"eptk.methods", "eptk.priors", "eptk.runs", "eptk.packaged"}}


def test_every_module_is_in_the_layer_table():
    table = layer_table()
    placed = [m for _, names, _ in table for m in names]
    assert len(placed) == len(set(placed)), "a module in two layers"
    missing = sorted(set(MODULES) - set(placed) - {"eptk"})
    assert not missing, f"modules the layer table of docs/ARCHITECTURE.md does not place: {missing}"


def test_imports_follow_the_layer_table():
    """No module imports from a layer above its own (function-level imports included)."""
    table = layer_table()
    layer_of = {m: layer for layer, names, _ in table for m in names}
    offences = []
    for i, (layer, names, _) in enumerate(table):
        allowed = allowed_layers(table, i)
        for module in sorted(names):
            for target in sorted(GRAPH[module]):
                stated = any(target == e or target.startswith(e + ".") for e in STATED_EXCEPTIONS.get(module, ()))
                if target in layer_of and layer_of[target] not in allowed and not stated:
                    offences.append(f"{module} ({layer}) imports {target} ({layer_of[target]})")
    assert not offences, offences
