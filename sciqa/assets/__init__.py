"""Offline assets: the packaged models and labelled question sets, where they resolve.

``registry`` (what ships and where it is), ``llm`` (causal LMs: GGUF conversion, loading),
``checks`` (``sciqa assets --check``), ``question_sets`` (ARC, OpenBookQA as sciqa tables).
Imports the kernel only; torch and transformers inside functions.
"""
