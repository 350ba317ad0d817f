"""DLA in a model: ``DynamicLinearAttention`` (a token mixer with flash-linear-attention's layer conventions),
the model-wide decoding cache ``DLACache`` and the small modules around them. docs/model.md describes them."""

from .cache import DLACache
from .dla import DynamicLinearAttention
from .modules import RMSNorm, ShortConvolution

__all__ = ["DLACache", "DynamicLinearAttention", "RMSNorm", "ShortConvolution"]
