"""retrieval: chunk a corpus, embed it into faiss + BM25, attach top-k context to questions.

``sciqa index`` builds an index folder (:mod:`retrieval.build`, layout in
:mod:`retrieval.index_dir`); ``sciqa retrieve`` fills the ``context`` column
(:mod:`retrieval.commands`). Heavy libraries (torch, faiss, bm25s) are imported inside
the functions that need them.
"""
