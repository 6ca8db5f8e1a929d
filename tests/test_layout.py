"""The package's import rules (docs/ARCHITECTURE.md), checked on the source: models never
import trainers, and family modules register into a registry instead of importing each other."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lbcnn"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth of the file."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # what "." means in path
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_models_never_import_trainers():
    offenders = {str(p.relative_to(PACKAGE.parent)): sorted(m for m in imported_modules(p)
                                                            if m.startswith("lbcnn.train"))
                 for p in sorted((PACKAGE / "models").glob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_imported_modules_resolves_relative_imports():
    names = imported_modules(PACKAGE / "train" / "cbcnn.py")
    assert "lbcnn.models.cbcnn" in names and "lbcnn.train.checkpoint" in names


def test_cbcnn_estimator_finds_its_trainer_through_the_registry():
    from lbcnn.models import trainer_for
    from lbcnn.train.cbcnn import train_cbcnn
    assert trainer_for("cbcnn") is train_cbcnn
    with pytest.raises(Exception, match="no trainer registered"):
        trainer_for("no-such-family")


@pytest.mark.parametrize("family_modules", [
    ("onnx_lbcnn", "onnx_cbcnn", "onnx_lowbit", "onnx_export"),
    ("c_lbcnn", "c_cbcnn", "c_hybrid", "c_lowbit", "c_export"),
    ("tflite_lbcnn", "tflite_cbcnn", "tflite_hybrid", "tflite_export"),
])
def test_exporter_families_register_instead_of_importing_each_other(family_modules):
    families, driver = family_modules[:-1], family_modules[-1]
    for name in families:
        others = {f"lbcnn.deploy.{m}" for m in family_modules if m != name}
        assert not imported_modules(PACKAGE / "deploy" / f"{name}.py") & others, name


def test_every_family_reaches_its_exporters_through_the_registries():
    from lbcnn.deploy.c_common import EXPORTERS
    from lbcnn.deploy.onnx_common import ONNX_BUILDERS
    from lbcnn.engine.cbcnn_plan import CBCNNPlan
    from lbcnn.engine.hybrid_plan import HybridPlan
    from lbcnn.engine.plan import IntegerPlan
    from lbcnn.models.cbcnn import CBCNN
    from lbcnn.engine.lowbit_plan import LowBitPlan
    from lbcnn.models.lbcnn import LBCNN
    from lbcnn.models.lowbit import LowBitCNN
    assert {IntegerPlan, CBCNNPlan, HybridPlan, LowBitPlan} <= set(EXPORTERS.keys())
    assert {LBCNN, CBCNN, LowBitCNN} <= set(ONNX_BUILDERS.keys())
    from lbcnn.deploy.tflite_common import TFLITE_BUILDERS
    assert {IntegerPlan, CBCNNPlan, HybridPlan} <= set(TFLITE_BUILDERS.keys())
