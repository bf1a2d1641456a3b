"""candle's own modelling code for the look-alikes of models that ship theirs (``trust_remote_code``).

Each file has the name, classes and ``auto_map`` targets of its real counterpart (gte-Qwen2's and
Stella's ``modeling_qwen.py``, NV-Embed-v2's ``configuration_nvembed.py`` / ``modeling_nvembed.py``,
``jinaai/jina-bert-implementation``'s ``configuration_bert.py`` / ``modeling_bert.py``, Jina Reranker v2's
``configuration_xlm_roberta.py`` / ``embedding.py`` / ``modeling_xlm_roberta.py``) but is written
for candle on the transformers it ships with: the look-alike builders copy them into the tiny repos,
and transformers imports them from there as it imports the real ones. None of it is the real code.
"""
