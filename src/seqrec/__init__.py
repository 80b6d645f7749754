"""seqrec: sequential recommendation, from an interaction log to real-time next-item recommendations."""

from typing import TYPE_CHECKING

from seqrec.data.io import ReadOptions, read_log
from seqrec.data.preprocess import Dataset, PreprocessOptions, build_dataset
from seqrec.data.split import EvalSet, Split, leave_one_out, make_split, temporal
from seqrec.datasets import load_dataset
from seqrec.errors import SeqrecError

if TYPE_CHECKING:
    from seqrec.recommender import Recommender
    from seqrec.train.config import TrainConfig

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Imported lazily so that `import seqrec.serve` never pulls in the training loop.
    if name == "Recommender":
        from seqrec.recommender import Recommender

        return Recommender
    if name == "TrainConfig":
        from seqrec.train.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'seqrec' has no attribute {name!r}")

__all__ = [
    "Dataset",
    "EvalSet",
    "PreprocessOptions",
    "ReadOptions",
    "Recommender",
    "SeqrecError",
    "Split",
    "TrainConfig",
    "build_dataset",
    "leave_one_out",
    "load_dataset",
    "make_split",
    "read_log",
    "temporal",
]
