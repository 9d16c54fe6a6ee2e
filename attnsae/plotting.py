"""The one way attnsae gets matplotlib: the Agg backend (files, no display), imported on first use."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (plots are written to PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
