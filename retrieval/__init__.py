"""retrieval: chunk a corpus, embed it into a faiss index, attach top-k context.

Not implemented yet; ``sciqa index`` and ``sciqa retrieve`` say so and exit non-zero.
"""
