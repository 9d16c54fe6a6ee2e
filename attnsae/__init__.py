"""attnsae: Attention Output SAEs: harvest hook_z, train sparse autoencoders, evaluate, attribute."""

__version__ = "0.1.0"
