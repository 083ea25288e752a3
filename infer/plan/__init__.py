"""What to run within the time: ``budget`` (costs, plans), ``planner`` (re-planning as
costs are measured), ``cascade`` (cheap stage, expensive stage), ``tta`` (rotations)."""
