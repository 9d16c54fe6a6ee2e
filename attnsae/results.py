"""The one shape every result has (experiments, DFA shares, ...): a small dataclass that serialises, summarises, plots.

An experiment function returns a `Result`; the command line then calls `write(result, out)` (the JSON
and the figures) and prints `result.summary()`. A subclass names its files (`name`), says its headline
in a few lines (`summary`) and draws its figures (`plot(out)`, nothing by default).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


def jsonable(x: Any) -> Any:
    """Numbers, arrays and tensors as plain JSON values (NaN/inf as null, so the file stays valid JSON)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(x.to_json() if hasattr(x, "to_json") else dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


@dataclasses.dataclass
class Result:
    name: ClassVar[str] = "result"  # file stem: OUT/<name>.json

    def to_json(self) -> dict:
        return jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def summary(self) -> str:
        raise NotImplementedError

    def plot(self, out: Path) -> list[Path]:
        """Write this result's figures into `out`; returns their paths."""
        return []


def write(result: Result, out, run: dict | None = None) -> list[Path]:
    """OUT/<name>.json and the result's figures; returns every path written. `run`: how it was computed (e.g. the
    model's precision, which can move attribution numbers), kept in the JSON under "run"."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.name}.json"
    path.write_text(json.dumps(result.to_json() | ({"run": run} if run else {}), indent=1))
    return [path, *result.plot(out)]
