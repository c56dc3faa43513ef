"""The package's rooms, and the boundary between them: the runtime never imports the offline tools.

`birdwatch/tools/` (synthetic scenes, bench kit, detector training) may import anything; nothing else
under birdwatch/ may import it, directly or lazily inside a function, except `cli.py`, which dispatches
the offline commands.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import birdwatch

PACKAGE = Path(birdwatch.__file__).parent
ROOMS = ("capture", "locate", "classify", "backends", "decide", "deliver", "runtime", "tools", "config", "web")
TOOLS = "birdwatch.tools"
ALLOWED = {PACKAGE / "cli.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in ALLOWED and (PACKAGE / "tools") not in p.parents)


def imported_names(path: Path) -> list[tuple[int, str]]:
    return imports_of(path.read_text(), module_name(path), is_package=path.name == "__init__.py", filename=str(path))


def imports_of(
    source: str, module: str, *, is_package: bool = False, filename: str = "<probe>"
) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth (inside functions too),
    relative ones resolved against `module`; `importlib.import_module("...")` with a literal counts."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from birdwatch import tools` names the package in the alias, not in the module.
            found.extend((node.lineno, f"{origin}.{alias.name}") for alias in node.names)
            found.append((node.lineno, origin))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def is_tools(module: str) -> bool:
    return module == TOOLS or module.startswith(TOOLS + ".")


def test_the_rooms_exist() -> None:
    for room in ROOMS:
        assert (PACKAGE / room / "__init__.py").is_file(), f"birdwatch/{room}/ is not a package"


def test_runtime_modules_never_import_the_offline_tools() -> None:
    modules = runtime_modules()
    assert len(modules) > 20, modules  # the walk found the package
    offences: dict[str, str] = {}  # "path:line" -> the module, once per import statement
    for path in modules:
        for line, module in imported_names(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if is_tools(module) and len(module) < len(offences.get(where, module + "?")):
                offences[where] = module
    assert not offences, "runtime modules import birdwatch.tools:\n" + "\n".join(
        f"{where}: imports {module}" for where, module in offences.items()
    )


def test_the_import_walk_sees_every_form() -> None:
    """The check above would pass vacuously if the walk missed a form of import; these all count."""
    forms = [
        "import birdwatch.tools.bench",
        "from birdwatch.tools.synthetic import Scene",
        "from birdwatch import tools",
        "from ..tools import specs",
        "def later():\n    from birdwatch.tools import untrained",
        "import importlib\nimportlib.import_module('birdwatch.tools.bench')",
    ]
    for source in forms:
        # As though it were a module in birdwatch/decide/, where `..tools` is birdwatch.tools.
        hits = [m for _, m in imports_of(source, "birdwatch.decide.probe") if is_tools(m)]
        assert hits, f"not seen as importing birdwatch.tools: {source!r}"
    clean = "from birdwatch.types import Box\nfrom . import tracking\nimport toolz\nfrom birdwatch import toolsmith\n"
    assert not [m for _, m in imports_of(clean, "birdwatch.decide.probe") if is_tools(m)]


# What each stage room may import besides the shared vocabulary: stages hand each other data through
# the runtime, never by importing one another. locate reads the loaded classifier (one backbone
# serves detection and species). decide's thread alone owns the outbox order, so it stores and hands
# its events to deliver itself. backends runs a network for either of them (torch, ONNX Runtime,
# OpenVINO, TensorRT) and knows no stage. weights finds, fetches and checks every part's weights file.
# The runtime wires every stage; only cli.py and tools/ import it.
SHARED = {
    "types", "errors", "redact", "geometry", "imaging", "precision", "config", "backends", "weights", "__version__"
}  # fmt: skip
STAGES = {
    "capture": set(),
    "locate": {"classify"},
    "classify": set(),
    "backends": set(),
    "decide": {"deliver"},
    "deliver": set(),
}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "birdwatch" else ""


def test_stage_rooms_import_only_the_shared_vocabulary() -> None:
    offences = []
    for stage, allowed in STAGES.items():
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            for line, module in imported_names(path):
                target = room_of(module)
                if target and target != stage and target not in SHARED | allowed:
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    assert not offences, "a stage imports another stage:\n" + "\n".join(sorted(set(offences)))


def test_only_the_entry_points_import_the_runtime() -> None:
    offences = []
    for path in runtime_modules():
        if (PACKAGE / "runtime") in path.parents:
            continue
        for line, module in imported_names(path):
            if room_of(module) == "runtime":
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    assert not offences, "\n".join(offences)


def test_the_command_line_answers_before_torch_is_imported() -> None:
    """torch and birder take seconds to import: `--help`, a usage mistake, `events` and a config error
    must not wait for them, so building the parser imports neither (a subprocess: this one has them)."""
    probe = "import sys; from birdwatch.cli import build_parser; build_parser(); print(sorted({'torch', 'birder', 'cv2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


MAX_LINES = 450  # a module past this holds two things; split it by what they are


def test_every_runtime_module_is_small_enough_to_read_whole() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in runtime_modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"over {MAX_LINES} lines: {long}"
