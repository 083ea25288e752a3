"""Scoring shared by train and infer: how a question becomes model inputs and scores.

``mc_encoding`` (multiple-choice encoder inputs), ``llm_prompts`` (causal-LM prompts),
``llm_scoring`` (option scores from a causal LM, torch), ``zero_shot`` (embedding cosines).
Imports the kernel only (``llm_scoring`` imports torch).
"""
