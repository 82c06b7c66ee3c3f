"""The model owner's side of offsite-tuning and the data owner's local training, without Flower.

Where things live:

- ``scaleot/``: the paper's algorithm, ScaleOT (Dynamic LayerReplace with harmonizers, Selective Rank
  Compression, emulator assembly), the baselines built the same way, and the bundle the model owner ships.
- ``tuning/``: the data owner's side: adapters, the local training loop, plug-in and export.
- ``lm/``: loading causal LMs and the per-family plumbing (which module holds the blocks) every package uses.
- ``data/``: tasks (the papers' and others), their encoding for training and scoring, the public corpus.
- ``evaluation/``: zero-shot scoring (log-likelihood accuracy, perplexity), its memo, the stealing probe.
- the root modules, torch-free: ``config`` and ``config_parse`` (the config layer), ``files`` (the file
  boundary), ``results`` (result rows) and ``assets`` (the offline task data; ``python -m emulator.assets
  fetch`` runs on a bare Python, so this file imports nothing).

Dependencies point one way: ``lm`` and ``data`` import neither ``scaleot`` nor ``tuning``, ``scaleot`` does
not import ``tuning``, ``evaluation`` imports neither (``tests/test_import_boundaries.py``).
"""
