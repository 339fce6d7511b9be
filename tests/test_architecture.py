"""The layering rule (docs/ARCHITECTURE.md): stage modules build on building blocks and
never import one another, and stage two touches nothing of stage one but the cache."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"
STAGE_MODULES = ("embed", "distributed", "finetune", "train_head", "evaluate", "predict")
# Stage-one building blocks that stage two (train_head, evaluate) must not need.
STAGE_ONE_BLOCKS = ("embedding", "encoding", "encoder", "windows", "data", "reuters", "cls_forward", "window_model",
                    "cache_writer", "shards", "ranks")


def imported_stage_modules(path: Path) -> set[str]:
    """Names of `stages.X` modules that `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stages.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stages":
                names |= {a.name for a in node.names}
            elif node.module.startswith("stages."):
                names.add(node.module.split(".")[1])
    return names


def test_the_scanner_sees_every_import_form(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import stages.embed\nfrom stages import predict\ndef f():\n    from stages.evaluate import g\n")
    assert imported_stage_modules(source) == {"embed", "predict", "evaluate"}


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_no_stage_imports_another_stage(stage):
    crossing = imported_stage_modules(STAGES_DIR / f"{stage}.py") & (set(STAGE_MODULES) - {stage})
    assert not crossing, f"stages/{stage}.py imports the stage(s) {sorted(crossing)}: move the shared piece into a block"


@pytest.mark.parametrize("stage", ("train_head", "evaluate"))
def test_stage_two_touches_stage_one_only_through_the_cache(stage):
    reached = imported_stage_modules(STAGES_DIR / f"{stage}.py") & set(STAGE_ONE_BLOCKS)
    assert not reached, f"stages/{stage}.py imports stage one's {sorted(reached)}"


def test_blocks_never_import_a_stage():
    for path in STAGES_DIR.glob("*.py"):
        if path.stem in STAGE_MODULES:
            continue
        crossing = imported_stage_modules(path) & set(STAGE_MODULES)
        assert not crossing, f"building block stages/{path.name} imports the stage(s) {sorted(crossing)}"

