"""Binary primitives shared by every model family."""
from .kernels import random_sign_kernels, sign_kernels_to_torch
from .pooling import maxpool_same, pooled_size

__all__ = ["random_sign_kernels", "sign_kernels_to_torch", "maxpool_same", "pooled_size"]
