"""retrieval: chunk a corpus, embed it into faiss + BM25, attach top-k context to questions.

``sciqa index`` builds an index folder, ``sciqa retrieve`` fills the ``context`` column.
Modules, from the command down:

* ``commands``: what the two commands run; the only ones that take the whole config;
* ``build``: corpus -> complete index folder (one machine, or train/shard/merge);
* ``search``: ``Retriever``, an opened index: dense + BM25 hits, fused, reranked;
* ``index_dir``: the folder's layout, manifest and checks;
* ``corpus_sources``, ``corpus``, ``chunking``, ``ingest``: articles in (streamed, a batch at
  a time), passages out;
* ``embed``, ``dense``, ``lexical``, ``fusion``, ``rerank``, ``context``: one step each.

Below ``commands`` a function takes the ``retrieval`` section (``RetrievalConfig``) plus
the few other values it reads, by name (``embedding``, ``reranker``, ``seed``,
``backbone``). Heavy libraries (torch, faiss, bm25s) are imported inside the functions
that need them.
"""
