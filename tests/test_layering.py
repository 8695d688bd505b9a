"""Data flows one way (docs/ARCHITECTURE.md): each layer imports only the layers below it, the
runtime never imports the passes, and no pass imports another pass."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from onnxcompress import registry

PACKAGE = Path(__file__).resolve().parents[1] / "onnxcompress"

# module (or package) -> layer, as in docs/ARCHITECTURE.md
LAYERS = {
    "errors": 1, "ops": 1, "exits": 1,
    "kernels": 2,
    "files": 3, "container": 3, "wire": 3,
    "runtime": 4,
    "io": 5, "normalize": 5, "data": 5, "graph": 5, "metrics": 5,
    "scope": 6, "calibration": 6, "compensate": 6,
    "passes": 7,
    "registry": 8, "pipeline": 8, "recipe": 8, "report": 8, "search": 8,
    "compress": 9,
    "__init__": 0, "__main__": 10,
}  # fmt: skip


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """onnxcompress modules imported by the file (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.startswith("onnxcompress")}
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "cli":
        return None if len(parts) < 2 else 10
    return LAYERS.get(parts[1])


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert _layer(_module_name(path)) is not None, f"{path}: add it to LAYERS and ARCHITECTURE"


def test_imports_only_go_down() -> None:
    bad = []
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        mine = _layer(me)
        for target in _imports(path):
            theirs = _layer(target)
            if theirs is not None and mine and theirs > mine:
                bad.append(f"{me} (layer {mine}) imports {target} (layer {theirs})")
    assert not bad, "\n".join(sorted(bad))


def test_no_pass_imports_another_pass() -> None:
    passes = {m.__name__ for m in registry.all_passes().values()}
    for module in passes:
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        others = {t for t in _imports(path) if t in passes and t != module}
        assert not others, f"{module} imports {others}"


def test_runtime_does_not_import_passes() -> None:
    code = ("import sys, onnxcompress.runtime; "
            "bad = [m for m in sys.modules if m.startswith(('onnxcompress.passes', "
            "'onnxcompress.pipeline', 'onnxcompress.recipe', 'onnxcompress.compress', "
            "'onnxcompress.graph', 'onnxcompress.calibration', 'onnx_graphsurgeon'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
