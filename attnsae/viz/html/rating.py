"""The interpretability rating sheet: one page that shows sampled features' dashboards in a frame next to
interpretable / not interpretable buttons and notes (the app itself is static/rating.js)."""
from __future__ import annotations

import os

from .templating import render


def render_rating_sheet(sheet: dict) -> str:
    """Interpretability rating sheet: sampled features, their dashboards in a side frame, and
    interpretable / not interpretable buttons with notes. Choices persist in localStorage;
    "Export ratings" downloads the ratings-file JSON (merge with
    attnsae.evals.interpretability.merge_export)."""
    feats = sheet.get("features") or []
    title = sheet.get("title") or f"Interpretability ratings · {sheet.get('sae', '')}"
    # what the app reads (embedded as JSON); the page shows the same values
    data = {"title": title, "sae": str(sheet.get("sae", "")), "layer": sheet.get("layer"),
            "seed": sheet.get("seed", 0),
            "ratings_file": os.path.basename(str(sheet.get("ratings_file") or "ratings.json")) or "ratings.json",
            "features": [{"feature": f["feature"], "dashboard": str(f.get("dashboard", ""))} for f in feats]}
    return render("rating.html", title=title, data=data)
