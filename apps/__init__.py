"""Domain apps built on the core: one package per domain, each with data, model, metrics,
module, ``train.py`` and ``configs/``. An app imports ``core`` only, never another app."""
