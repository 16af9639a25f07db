"""Experiments that reproduce the papers' claims; each writes results.json, PNG plots and a markdown table. Each
module of a `pmoe experiment NAME` declares its name, flags, config and run (`pmoe.experiments.contract`)."""
