"""Task sentence-embedding: contrastive fine-tuning of a sentence encoder.

The rows are read and tokenized like every other format (``data.formats`` pairs,
``data.tokenize.PairExample``, ``data.batching.collate_text_pairs``); here is what is the
task's own: how token vectors become one sentence vector (:mod:`.pooling`), the
contrastive losses (:mod:`.loss`), retrieval scores on the held-out pairs
(:mod:`.retrieval`) and the sentence-transformers layout of the published set
(:mod:`.layout`).
"""
