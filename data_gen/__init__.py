"""data_gen: turn Wikipedia chunks into new multiple-choice questions with an LLM.

Not implemented yet; ``sciqa gen`` says so and exits non-zero.
"""
