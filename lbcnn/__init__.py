"""lbcnn: light binary CNNs for TinyML.

The data's path through the package (docs/ARCHITECTURE.md):
``data`` -> ``binary`` (shared +-1 primitives) -> ``models`` (one module per
family: the body) -> ``heads`` (ELM and friends) -> ``train`` (search,
optimize, training) -> ``engine`` -> ``deploy``; ``io`` opens every artefact.
"""
from .data import Dataset, load_dataset
from .models import create_model, list_models, load_model
from .models.lbcnn import LBCNN, LBCNNBody
from .train.search import search

__version__ = "0.1.0"
__all__ = ["LBCNN", "LBCNNBody", "Dataset", "load_dataset", "search", "create_model",
           "list_models", "load_model", "__version__"]
