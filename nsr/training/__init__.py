"""Training: shapes and samples (``shapes``, ``data``), losses, and the Lightning pieces
(``lightning``) that ``python -m nsr.train`` assembles from the Hydra configs."""
