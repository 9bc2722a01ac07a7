"""Evaluation metrics: FID (TF Inception 2015-12-05 pool_3 features + Fréchet distance).

- ``frechet``: ``frechet_distance``, ``frechet_distance_eigh``, ``frechet_distance_eigvals``,
  ``frechet_distance_lowrank``, ``fid_function``,
  ``statistics``,
  ``save_stats`` / ``load_stats`` (numpy / scipy only).
- ``inception``: ``FIDInceptionV3`` (MindSpore cell).
- ``weights``: ``load_fid_inception``, ``find_fid_helper_weights`` (offline, torch-free weight reading).
- ``features``: ``FeatureExtractor``, ``preprocess``, ``resize_bilinear``.

The MindSpore-backed names are imported lazily so that the Fréchet part works without
initialising MindSpore.
"""
from .frechet import (FIDStatsError, fid_from_features, fid_function, frechet_distance, frechet_distance_eigh,
                      frechet_distance_eigvals, frechet_distance_lowrank, load_stats, save_stats, statistics)

_LAZY = {
    "FIDInceptionV3": "inception",
    "FeatureExtractor": "features",
    "FIDInputError": "features",
    "preprocess": "features",
    "resize_bilinear": "features",
    "load_fid_inception": "weights",
    "find_fid_helper_weights": "weights",
    "FIDWeightsError": "weights",
    "FIDWeightsNotFoundError": "weights",
}

__all__ = ["FIDStatsError", "fid_from_features", "fid_function", "frechet_distance", "frechet_distance_eigh",
           "frechet_distance_eigvals",
           "frechet_distance_lowrank",
           "load_stats", "save_stats", "statistics", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
