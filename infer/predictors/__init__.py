"""Scoring encoded questions: one :class:`~infer.predictors.base.Predictor` protocol.

``base`` (the protocol, ``BatchTiming``, ``Interrupted``, ``Encoded``), ``encoder`` (a
multiple-choice encoder), ``causal`` (a causal LM scoring options), ``offload/`` (a
causal LM streamed one layer at a time), ``sharded`` (any of them, one copy per device),
``cached`` (any of them behind the logits cache), ``devices`` (``infer.device(s)``,
dtype) and ``families`` (which of them a member gets, and everything else that differs
between an encoder and a causal LM).
"""
