"""infer: offline ensemble inference over fold checkpoints into ``submission.csv``.

``sciqa infer QUESTIONS MODEL_DIR... --out OUT_DIR`` (see :mod:`infer.commands`).
Modules: ``models`` (which checkpoints, ``llm:NAME`` causal LMs), ``predict`` (one
encoder, fast), ``llm_predict`` (one causal LM scoring options), ``tta``, ``ensemble``,
``oof_weights`` (``--weights auto``), ``budget``, ``cascade``, ``runner`` (the loop),
``outputs`` (what OUT_DIR holds).
"""
