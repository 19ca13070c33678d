"""Evaluation: marching cubes baseline (``marching_cubes``), mesh metrics (``metrics``) and
headless pictures (``render``), used by ``nsr-compare`` and the demo."""
