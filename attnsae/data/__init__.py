"""Data: corpora -> token windows -> harvested activations in an on-disk store."""

from .corpus import DEFAULT_CORPUS, iter_documents
from .harvest import collect, harvest, hook_width
from .store import ActivationStore, StoreError, StoreWriter
from .stream import StreamedActivations
from .windows import WindowSpec, load_windows, make_windows, split_windows

__all__ = [
    "DEFAULT_CORPUS", "iter_documents", "collect", "harvest", "hook_width",
    "ActivationStore", "StoreError", "StoreWriter", "StreamedActivations",
    "WindowSpec", "load_windows", "make_windows", "split_windows",
]
