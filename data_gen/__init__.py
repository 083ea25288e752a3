"""data_gen: turn Wikipedia passages into new multiple-choice questions with an LLM.

``sciqa gen`` (:func:`data_gen.commands.run_gen`) selects passages, asks an
OpenAI-compatible endpoint through a resumable SQLite cache, validates every reply and
filters the questions; ``sciqa serve-llm`` (:mod:`data_gen.server`) runs the packaged
SmolLM2 behind ``transformers serve``. See docs/data_gen.md.
"""
