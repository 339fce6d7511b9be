"""The layering rule (docs/ARCHITECTURE.md), checked by package and followed transitively.

The package `longdoc` has three floors:
* the top: the six stages (`embed`, `distributed`, `finetune`, `train_head`, `evaluate`,
  `predict`), `configs` (every command's settings), `options` (the option sets several
  commands share) and `cli`;
* the building blocks: one sub-package per concern, each allowed to import only the
  sub-packages below it in `BLOCK_LAYERS`;
* the package's own `__init__` (its version), which anything may read.
No stage imports another stage, no block imports the top floor, and stage two
(`train_head`, `evaluate`) reaches no block of stage one but the cache, even through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stages" / "longdoc"
STAGES = ("embed", "distributed", "finetune", "train_head", "evaluate", "predict")
TOP = (*STAGES, "configs", "options", "cli", "__main__")
# Lowest first: a block package may import only the packages before it (and itself).
BLOCK_LAYERS = ("runtime", "settings", "corpus", "terms", "encoding", "cache", "heads", "explain", "reports",
                "training", "embedding", "inference")
# What stage two must not reach, even through another block: reading a corpus or running an
# encoder is stage one's (evaluate reads texts for its report only through explain.text, below).
STAGE_ONE_ONLY = ("longdoc.corpus.", "longdoc.encoding.", "longdoc.embedding.", "longdoc.cache.writer")
# ... but for the names of the built-in corpora (no code), which the commands' settings offer.
NAMES_ONLY = ("longdoc.corpus.builtin",)
# Modules stage two may reach stage one through, and what for.
STAGE_TWO_EXCEPTIONS = {
    # report.html shows the documents' text: the corpus, checked against the cache's
    # data_fingerprint, and the tokenizer's character offsets (never the encoder's weights).
    "evaluate": ("longdoc.explain.text",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path) -> set[str]:
    """The `longdoc` modules `path` imports when it runs, at any depth of the file
    (imports under `if TYPE_CHECKING:` are for annotations only and do not count)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "longdoc"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "longdoc":
            for alias in node.names:  # `from longdoc.x import y`: y may be a module or a name in x
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


IMPORTS = {name: runtime_imports(path) for name, path in MODULES.items()}


def reached(name: str, through_none_of: tuple[str, ...] = ()) -> set[str]:
    """Every `longdoc` module `name` imports, directly or through the modules it imports
    (not looking past the modules `through_none_of`)."""
    seen, todo = set(), [name]
    while todo:
        for imported in IMPORTS.get(todo.pop(), ()):
            if imported not in seen and imported not in through_none_of:
                seen.add(imported)
                todo.append(imported)
    return seen


def floor(name: str) -> str:
    """'top', 'root' (longdoc/__init__) or the block package of a module."""
    parts = name.split(".")
    if len(parts) == 1:
        return "root"
    return "top" if parts[1] in TOP else parts[1]


def test_every_module_is_on_a_floor():
    unknown = [name for name in MODULES if floor(name) not in ("top", "root", *BLOCK_LAYERS)]
    assert not unknown, f"modules outside the known floors (add their package to BLOCK_LAYERS): {unknown}"


def test_the_scanner_sees_every_import_form(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import longdoc.embed\nfrom longdoc import predict\nfrom longdoc.cache import reader\n"
                      "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from longdoc.configs import X\n"
                      "def f():\n    from longdoc.heads.head import Head\n")
    assert runtime_imports(source) == {"longdoc.embed", "longdoc.predict", "longdoc.cache.reader",
                                       "longdoc.heads.head"}


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    others = {f"longdoc.{s}" for s in STAGES} - {f"longdoc.{stage}"}
    crossing = IMPORTS[f"longdoc.{stage}"] & others
    assert not crossing, f"longdoc.{stage} imports the stage(s) {sorted(crossing)}: share a block instead"


@pytest.mark.parametrize("package", BLOCK_LAYERS)
def test_blocks_import_only_lower_blocks(package):
    allowed = set(BLOCK_LAYERS[:BLOCK_LAYERS.index(package) + 1]) | {"root"}
    for name in (n for n in MODULES if floor(n) == package):
        wrong = {imported for imported in IMPORTS[name] if floor(imported) not in allowed}
        assert not wrong, (f"block {name} imports {sorted(wrong)}: a block imports only the blocks below it "
                           f"({', '.join(BLOCK_LAYERS[:BLOCK_LAYERS.index(package)])}) and never a stage, "
                           f"longdoc.configs or longdoc.cli")


@pytest.mark.parametrize("stage", ("train_head", "evaluate"))
def test_stage_two_reaches_stage_one_only_through_the_cache(stage):
    wrong = {m for m in reached(f"longdoc.{stage}", STAGE_TWO_EXCEPTIONS.get(stage, ()))
             if m.startswith(STAGE_ONE_ONLY) and m not in NAMES_ONLY}
    assert not wrong, f"longdoc.{stage} reaches stage one's {sorted(wrong)}"


def test_command_settings_import_no_torch_and_no_block_with_it():
    """configs is read before any work (cli.py checks options in a fraction of a second):
    it reaches only torch-free modules, which test_settings.py checks in a real process."""
    heavy = {m for m in reached("longdoc.configs")
             if floor(m) not in ("root", "runtime", "settings", "corpus") and m != "longdoc.options"}
    assert not heavy, f"longdoc.configs reaches {sorted(heavy)}"


def test_tests_mirror_the_package_and_take_helpers_by_name():
    """A block's tests sit in tests/<its sub-package>/, a stage's at the top of tests/; shared
    helpers come from synthetic, checkout or assertions, never from conftest (fixtures only), and a
    test module takes nothing from another folder's test modules (which pytest finds only by luck of
    collection order)."""
    tests = PACKAGE.parent.parent / "tests"
    sub_packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    for folder in (p for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert folder.name in sub_packages, f"tests/{folder.name}/ mirrors no sub-package of longdoc"
    for path in tests.rglob("*.py"):
        tree = ast.parse(path.read_text())
        bad = [node.lineno for node in ast.walk(tree)
               if isinstance(node, (ast.Import, ast.ImportFrom))
               and "conftest" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])]
        assert not bad, f"{path.relative_to(tests)} line {bad[0]} imports conftest: import the helper's own module"
        siblings = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("test_") and not (path.parent / f"{node.module}.py").exists()]
        assert not siblings, (f"{path.relative_to(tests)} imports {siblings[0]} from another folder: "
                              "move what both need into synthetic, checkout or assertions")
