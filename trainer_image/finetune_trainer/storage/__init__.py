"""Where models, datasets and artifacts live: URI parsing (pure) and scheme backends.

``uri`` is pure and torch-free so the contract can validate URIs; ``backends`` does
the I/O, one registry entry per scheme.
"""
