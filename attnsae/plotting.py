"""The one way attnsae gets matplotlib: the Agg backend (files, no display), imported on first use."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (plots are written to PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, tight: bool = True) -> Path:
    """Write `fig` to `path` as PNG (after tight_layout unless told not to) and free it; returns the path."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return Path(path)
