"""Rendering: feature dashboards and the per-head report as static HTML and JSON (attnsae.features computes
what they show)."""
