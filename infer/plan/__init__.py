"""What to run within the time: ``budget`` (costs, plans), ``cascade``, ``tta`` (rotations)."""
