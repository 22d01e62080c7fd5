"""After training: merge an adapter into its base and export the model for serving.

:mod:`.merge` merges shard by shard with bounded memory; :mod:`.gguf_writer` writes
GGUF for llama.cpp; :mod:`.artifact` reads a published set, writes the export with its
manifest and publishes it (``finetune export``, and a run's ``output.merge``).
"""
