"""Models: loading by name, and the hooked transformer they are converted into."""

from .config import ModelConfig, Processing
from .device import resolve_device
from .loading import ALIASES, DEFAULT_MODEL, MODEL_DTYPES, from_hf, gpt2_tokenizer, home, load_model
from .text import TokenText
from .transformer import Transformer, add, init_random, replace_with, zero_ablate

__all__ = [
    "ModelConfig", "Processing", "Transformer", "load_model", "from_hf", "gpt2_tokenizer", "home",
    "ALIASES", "DEFAULT_MODEL", "MODEL_DTYPES", "resolve_device", "TokenText",
    "zero_ablate", "replace_with", "add", "init_random",
]
