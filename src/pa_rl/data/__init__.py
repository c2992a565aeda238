"""Data layer: load any Minari dataset into :class:`Episode` lists; generate the built-in ones."""

from pa_rl.data.episodes import Episode
from pa_rl.data.minari_io import DataError, LoadedDataset, load_dataset, write_dataset
from pa_rl.data.registry import available_datasets, dataset_info, make_dataset

__all__ = [
    "DataError",
    "Episode",
    "LoadedDataset",
    "available_datasets",
    "dataset_info",
    "load_dataset",
    "make_dataset",
    "write_dataset",
]
