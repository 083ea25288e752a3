"""train: k-fold fine-tuning of ``AutoModelForMultipleChoice`` on question + context.

Not implemented yet; ``sciqa train`` says so and exits non-zero.
"""
