"""The import-layer check: kdumpd's modules import downward only, without cycles.

Every ``import`` of a module counts, inside functions and ``TYPE_CHECKING``
blocks too: an import hidden in a function body is still a dependency, and
hiding one is how cycles used to be kept from biting. The check fails on

* any import cycle among kdumpd's modules;
* any import from the capture side (``kdumpd.capture``) into first-kernel code,
  and any import of the capture side by first-kernel code (the agent is a
  separate program that shares only the contract and the ground);
* any import of a higher layer (see :data:`LAYERS`, top first);
* a module that belongs to no layer.

Run it as ``python -m tests.support.layers [PACKAGE_DIR]`` (tools/run-tests.sh
does); ``tests/unit/test_layers.py`` shows it failing on a deliberate cycle and
on a capture -> first-kernel import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kdumpd.image.agent import AGENT_FILES

#: Layers from the top; a module may import its own layer and the layers below it.
#: Names are module prefixes relative to the package (``targets`` covers kdumpd.targets.*).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "daemon"),  # entry points: argv, D-Bus; rendering and exit codes
    ("manager", "lifecycle"),  # use cases (lifecycle: boot parameters, hooks, test)
    # plan, capture image, load, next boot, boot configuration
    ("planner", "image", "kexec", "postcrash", "bootloader"),
    ("targets",),  # first kernel, one module per target kind
    ("config", "host", "crashkernel", "cmdline", "estimate"),  # readings of the system
    ("contract",),  # what both kernels agree on
    ("", "errors", "paths", "proc", "durable", "mountinfo", "arch", "messages", "vmcore"),
)
_HERE = "tests/support/layers.py"
#: The crash kernel's side: it may import only the areas of the files the image
#: carries for it (the contract, the ground, the vmcore readers, and itself).
CAPTURE = "capture"
CAPTURE_MAY_IMPORT: frozenset[str] = frozenset(
    "" if name == "kdumpd/__init__.py" else name.split("/")[1].removesuffix(".py")
    for name in AGENT_FILES
)
#: The contract may import only itself and the error root.
CONTRACT_MAY_IMPORT: tuple[str, ...] = ("contract", "errors")


@dataclass(frozen=True)
class Violation:
    module: str
    message: str

    def __str__(self) -> str:
        return f"{self.module}: {self.message}"


def module_name(package_dir: Path, path: Path) -> str:
    """``kdumpd/targets/fs.py`` -> ``kdumpd.targets.fs``; an ``__init__`` is its package."""
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(
    modules: Mapping[str, Path], current: str, is_package: bool, node: ast.ImportFrom
) -> list[str]:
    """The modules of the package that a ``from ... import ...`` names."""
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    found = []
    for alias in node.names:
        candidate = f"{origin}.{alias.name}"
        found.append(candidate if candidate in modules else origin)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its source)."""
    root = package_dir.name
    files = {module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve(files, name, is_package, node)
            else:
                continue
            for imported in names:
                if imported != root and not imported.startswith(root + "."):
                    continue
                # "import kdumpd.a.b" names kdumpd.a.b; keep the longest module that exists
                while imported not in files and "." in imported:
                    imported = imported.rsplit(".", 1)[0]
                if imported != name:
                    targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _area(root: str, module: str) -> str:
    """The first component below the package (``kdumpd.targets.fs`` -> ``targets``)."""
    rest = module[len(root) + 1 :] if module != root else ""
    return rest.split(".", 1)[0]


def _layer(area: str) -> int | None:
    for level, members in enumerate(LAYERS):
        if area in members:
            return level
    return None


def check(package_dir: Path) -> list[Violation]:
    """Every violation of the layering of the package at ``package_dir``."""
    root = package_dir.name
    graph = import_graph(package_dir)
    problems: list[Violation] = []
    for component in cycles(graph):
        problems.append(Violation(component[0], "import cycle: " + " <-> ".join(component)))
    for module, imported in sorted(graph.items()):
        area = _area(root, module)
        if area == CAPTURE:
            for target in sorted(imported):
                if _area(root, target) not in CAPTURE_MAY_IMPORT:
                    problems.append(
                        Violation(
                            module,
                            f"the capture side imports first-kernel code {target}; it may "
                            "import only the contract, the ground and the vmcore readers",
                        )
                    )
            continue
        level = _layer(area)
        if level is None:
            problems.append(
                Violation(
                    module,
                    f"belongs to no layer; add {area!r} to LAYERS in tests/support/layers.py",
                )
            )
            continue
        for target in sorted(imported):
            target_area = _area(root, target)
            if target_area == CAPTURE:
                problems.append(
                    Violation(module, f"first-kernel code imports the capture side {target}")
                )
                continue
            if area == "contract" and target_area not in CONTRACT_MAY_IMPORT:
                problems.append(
                    Violation(module, f"the contract imports {target}; only errors is allowed")
                )
                continue
            target_level = _layer(target_area)
            if target_level is not None and target_level < level:
                problems.append(
                    Violation(
                        module, f"imports {target}, which is in a higher layer ({target_area})"
                    )
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    package_dir = Path(args[0] if args else Path(__file__).resolve().parents[2] / "kdumpd")
    problems = check(package_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    graph = import_graph(package_dir)
    edges = sum(len(v) for v in graph.values())
    verdict = "ok" if not problems else f"{len(problems)} violation(s)"
    print(f"import layers: {len(graph)} modules, {edges} imports: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
