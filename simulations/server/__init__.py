"""The model owner's side of a run, behind Flower's ServerApp (ours): the app (``app``), the federation
(``federation``: bundle, zero-shot rows, rounds), the server-side evaluation of each round (``evaluation``),
the emulator bundle cache (``bundle_cache``), what a run leaves on disk (``outputs``, ``export_run``) and
TensorBoard tracking (``tracking``).

Nothing is re-exported here: ``app`` imports Flower and torch, and the ``scaleot`` command imports
``export_run`` without either.
"""
