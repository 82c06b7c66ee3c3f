"""Runs on Flower (ours): the ``scaleot`` command (``cli``), the run config (``run_config``), the Ray
backend (``runner``), scoring through lm-evaluation-harness (``harness``), what runs behind the model owner's
ServerApp (``server/``) and the lab studies around it (``studies/``).
"""
