"""Everything that fits weights, after the models on the data's path.

- ``search``: random kernel search with closed-form ELM heads (``lbcnn search``);
- ``optimize/``: the multi-objective Optuna study over LB-CNN architectures;
- ``cbcnn`` (+ ``cbcnn_recipe``, ``checkpoint``, ``losses``): CBCNN training;
- ``distill``: the float-twin teacher and the KD loss;
- ``head_finetune``: Adam fine-tuning of an LB-CNN's head on frozen features;
- ``transfer``: a new last layer on a frozen binary backbone.

Importing the package registers each family's trainer with ``lbcnn.models``
(``register_trainer``), where the estimators' ``fit`` looks it up: models never
import this package.
"""
from . import cbcnn as _cbcnn  # noqa: F401  (registers the CBCNN trainer)
