"""infer: offline ensemble inference over fold checkpoints into ``submission.csv``.

Not implemented yet; ``sciqa infer`` says so and exits non-zero.
"""
