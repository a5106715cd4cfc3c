"""PyTorch quantizers and quantized layers (the first stage of the pipeline).

:func:`quantize` converts a float model post-training; the modules in :mod:`.layers`
define the integer inference semantics that the Relax rewrite reproduces exactly.
"""

from .activations import ActivationQuantizer, BipolarQuantizer, FatnnQuantizer, PerTokenQuantizer, UniformQuantizer
from .convert import FIRST_LAST, quantize
from .layers import LINEAR_ONLY_SCHEMES, QUANTIZE_SCHEMES, QuantConv2d, QuantLayer, QuantLinear, quantize_levels
from .weights import FGQ, TNT, TWN, AbsMean, Bipolar, FatnnWeights, Symmetric, Unipolar, WeightQuantizer

__all__ = ["quantize", "QUANTIZE_SCHEMES", "LINEAR_ONLY_SCHEMES", "QuantConv2d", "QuantLinear", "QuantLayer", "quantize_levels",
           "ActivationQuantizer", "UniformQuantizer", "BipolarQuantizer", "FatnnQuantizer", "PerTokenQuantizer",
           "WeightQuantizer", "AbsMean", "TWN", "TNT", "FatnnWeights", "Bipolar", "Unipolar", "Symmetric", "FGQ",
           "FIRST_LAST"]
