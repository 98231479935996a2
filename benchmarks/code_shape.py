"""Count what makes the code hard to change safely (issue 18), by reading the source (no import).

    python3 benchmarks/code_shape.py             # this checkout
    python3 benchmarks/code_shape.py OTHER_ROOT  # e.g. an older revision: git archive REV | tar -x -C OTHER_ROOT
    python3 benchmarks/code_shape.py --list      # also name every signature and call counted

Counted over the repository's Python files outside tests/ (benchmarks/ and scripts/ included):

- signatures taking the whole flags object: functions with a parameter annotated ``argparse.Namespace``,
  and how many of them lie outside the command-line layer and the converters (``CLI_LAYER``, ``CONVERTERS``);
- runtime options passed by hand: calls with an ``amp=`` or ``channels_last=`` keyword, other than
  those that build the ``Runtime`` (``Runtime(...)``, ``dataclasses.replace(runtime, ...)``);
- training loops: functions that call both ``.backward()`` and ``.step()`` (benchmarks/ shown apart: its
  loops time single steps);
- checkpoint loaders: functions that call ``load_checkpoint`` or ``model_from_checkpoint``, by file;
- import circles: groups of modules that import each other (strongly connected components of the
  graph of imports between the repository's modules; a package's ``__init__`` counts as the package).
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

SKIP = ("tests", ".git", "__pycache__")
RUNTIME_MAKERS = ("Runtime", "replace")
CLI_LAYER = ("run.py", "cli/", "scripts/", "benchmarks/", "methods/modes.py")  # programs and their mode entry points
CONVERTERS = (  # flags to typed parts, their record, the recipe that settles them, and --mode cluster's entry point
    "utils/options.py:from_args", "utils/runtime.py:runtime_from_args", "utils/checkpoint.py:plain_args",
    "data/config.py:data_config", "data/__init__.py:build_splits", "methods/runner.py:make_context",
    "methods/prusc.py:apply_recipe", "cluster/fit.py:run")  # building or deriving the runtime object is where these options belong


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not any(part in SKIP for part in p.relative_to(root).parts))


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def called_names(node: ast.AST) -> set[str]:
    names = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def imports(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The repository modules a module imports (``from pkg import mod`` resolved to ``pkg.mod`` when it is one)."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]),
                        help="the checkout to read (default: this one)")
    parser.add_argument("--list", action="store_true", help="name every signature and by-hand call counted")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if not (root / "run.py").is_file():
        parser.error(f"{root} holds no run.py; pass the root folder of a checkout of this toolkit")
    files = python_files(root)
    trees = {p: ast.parse(p.read_text(), str(p)) for p in files}
    names = {p: module_name(p, root) for p in files}
    modules = set(names.values())
    whole_args, by_hand, loops = [], [], []
    loaders: dict[str, list[str]] = defaultdict(list)
    graph: dict[str, set[str]] = {}
    for path, tree in trees.items():
        rel = str(path.relative_to(root))
        for fn in functions(tree):
            params = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
            if any(p.annotation is not None and "Namespace" in ast.unparse(p.annotation) for p in params):
                whole_args.append(f"{rel}:{fn.name}")
            calls = called_names(fn)
            if "backward" in calls and "step" in calls:
                loops.append(f"{rel}:{fn.name}")
            if calls & {"load_checkpoint", "model_from_checkpoint"}:
                loaders[rel].append(fn.name)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            callee = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if callee not in RUNTIME_MAKERS and any(k.arg in ("amp", "channels_last") for k in call.keywords):
                by_hand.append(f"{rel}:{call.lineno}")
        graph[names[path]] = imports(tree, names[path], path.name == "__init__.py", modules)
    found = circles(graph)
    print(f"source: {root} ({len(files)} Python files outside tests/)")
    inside = [w for w in whole_args if not w.startswith(CLI_LAYER) and w not in CONVERTERS]
    print(f"signatures taking the whole argparse.Namespace: {len(whole_args)} in "
          f"{len({w.split(':')[0] for w in whole_args})} files; outside the command-line layer and the "
          f"converters: {len(inside)}" + (f" ({', '.join(inside)})" if inside else ""))
    if args.list:
        print("".join(f"  {w}\n" for w in whole_args), end="")
    print(f"calls passing amp=/channels_last= by hand: {len(by_hand)}"
          + (f": {', '.join(by_hand)}" if args.list else ""))
    timed = [loop for loop in loops if loop.startswith("benchmarks/")]
    library = [loop for loop in loops if loop not in timed]
    print(f"training loops (functions calling .backward() and .step()): {len(library)}: {', '.join(library)} "
          f"(and {len(timed)} timed steps in benchmarks/)")
    print(f"functions loading checkpoints (load_checkpoint/model_from_checkpoint): "
          f"{sum(len(v) for v in loaders.values())} in {len(loaders)} file(s): "
          + "; ".join(f"{f}: {', '.join(v)}" for f, v in sorted(loaders.items())))
    print(f"import circles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
