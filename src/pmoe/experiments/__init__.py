"""Experiments that reproduce the papers' claims; each writes results.json, PNG plots and a markdown table."""
