"""Everything that fits weights, after the models on the data's path.

- ``search``: random kernel search with closed-form ELM heads (``lbcnn search``);
- ``optimize/``: the multi-objective Optuna study over LB-CNN architectures;
- ``cbcnn`` (+ ``cbcnn_recipe``, ``checkpoint``, ``losses``): CBCNN training;
- ``distill``: the float-twin teacher and the KD loss;
- ``head_finetune``: Adam fine-tuning of an LB-CNN's head on frozen features;
- ``transfer``: a new last layer on a frozen binary backbone.

Each trainer module registers its family's trainer with ``lbcnn.models``
(``register_trainer``), whose registry imports it by name (``lbcnn.train.cbcnn``) on the
first lookup: models never import this package, and importing the package costs nothing.
"""
