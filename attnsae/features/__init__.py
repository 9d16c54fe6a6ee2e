"""Features of an SAE over token windows: where its activations come from (a model or a store), the
one-pass statistics of every feature, dashboard data, and the inputs every feature command loads."""

from .dashboard import build_dashboards, choose_examples
from .inputs import Inputs, InputSpec, load_inputs
from .source import ActivationSource, encode_features
from .stats import FeatureStats, StatsCollector, cached_stats, feature_stats, random_live

__all__ = [
    "build_dashboards", "choose_examples", "Inputs", "InputSpec", "load_inputs", "ActivationSource", "encode_features",
    "FeatureStats", "StatsCollector", "cached_stats", "feature_stats", "random_live",
]
