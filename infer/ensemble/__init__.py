"""Ensembling is data: ``combine`` (weighted means of logits arrays), ``fit`` (weights
fitted on arrays: greedy, stacking, nested-CV selection), ``oof`` (reading train runs'
out-of-fold logits and labels for ``--weights auto|stack|select``)."""
