"""hf_repsim: are two language models with close output distributions similar inside?"""

from hf_repsim.api import compare_representations
from hf_repsim.callback import RepSimCallback
from hf_repsim.heads import Head
from hf_repsim.measures import MEASURE_KEYS, MeasureConfig, Measures, compute_measures
from hf_repsim.stats import RepSimState

__all__ = [
    "MEASURE_KEYS",
    "Head",
    "MeasureConfig",
    "Measures",
    "RepSimCallback",
    "RepSimState",
    "compare_representations",
    "compute_measures",
]
__version__ = "0.1.0"
