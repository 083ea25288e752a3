"""infer: offline ensemble inference over fold checkpoints into ``submission.csv``.

``sciqa infer QUESTIONS MODEL_DIR... --out OUT_DIR`` (:mod:`infer.commands`) and
``sciqa pack`` (:mod:`infer.pack`). Each layer imports only the ones below it:

- ``commands`` (``run_infer``: the named steps) over ``summary`` (manifest and scores),
  ``takeover`` (the run id; OUT_DIR taken over from the run before it, ``previous/``),
  ``runner`` (the loop over members, outputs after each), ``member`` (one member's
  passes: cached, or loaded and scored within the plan) and ``encodings`` (tokenizers and
  encoded questions, shared between folds); these import torch.
- ``predictors/``: scoring. ``base`` (the :class:`~infer.predictors.base.Predictor`
  protocol and its small types), ``encoder``, ``causal``, ``offload/`` (layer
  streaming), ``sharded`` (one copy per device), ``cached`` (the logits cache around any
  predictor), ``devices``, ``families`` (all that differs between an encoder and a
  causal LM). May import ``plan``, ``outputs`` and below.
- ``pack/``: ``sciqa pack`` bundles. May import ``plan``, ``ensemble`` and below.
- ``plan/``: what to run within the time: ``budget`` (costs, plans), ``planner``
  (re-planning), ``cascade``, ``tta``. ``outputs``: OUT_DIR's files and
  :class:`~infer.outputs.Results`. Both may import ``ensemble`` and below.
- ``ensemble/``: arrays: ``combine``, ``fit`` (weights), ``oof`` (train runs' OOF files).
- ``models`` (which checkpoints; no torch), ``questions``, ``errors``: the ground floor.
"""
