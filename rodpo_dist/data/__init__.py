"""Data layer: sources -> leave-one-out WebDataset shards + manifest, and the readers training uses."""

from rodpo_dist.data.contexts import Contexts, SequenceBatch, TrainingContexts
from rodpo_dist.data.dataset import PreparedDataset, load_dataset
from rodpo_dist.data.errors import DataError
from rodpo_dist.data.loader import SplitData, iter_item_blocks, load_item_features, load_split, sequence_loader
from rodpo_dist.data.manifest import Manifest, load_manifest, verify
from rodpo_dist.data.synthetic import GroundTruth

__all__ = ["Contexts", "DataError", "GroundTruth", "Manifest", "PreparedDataset", "SequenceBatch", "SplitData",
           "TrainingContexts", "iter_item_blocks", "load_dataset", "load_item_features", "load_manifest",
           "load_split", "sequence_loader", "verify"]
