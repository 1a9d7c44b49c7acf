"""Robust fine-tuning of CLIP-style image-text models under distribution shift.

``python -m apps.vision.train`` (no arguments): fine-tune the embedded zero-shot model on the
MNIST shift benchmark, then test: zero-shot vs fine-tuned vs WiSE-FT on ID and every shift,
the ID / OOD table printed and in ``report.md``. ``python -m apps.vision.benchmark`` runs
the whole method table over 3 seeds. See docs/vision.md.

Modules, one job each: ``prompts`` (class names, templates, zero-shot weights), ``towers``
(open_clip models from local weights; the image and text towers shared with other apps are
``core.towers``), ``alignment`` (LiT heads, cached), ``model`` (the image-text classifier
and its builder), ``losses`` (contrastive objectives),
``shifts`` (named distribution shifts), ``embedded`` / ``formats`` (the packaged benchmark,
on-disk images), ``data`` (the data module), ``module`` (``VisionModule``), ``robust``
(evaluation under shift, WiSE-FT, soups), ``metrics``, ``plots``, ``report`` (what
``report.md`` says), ``train`` and ``benchmark`` (entry points).
"""
