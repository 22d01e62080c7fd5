"""Where models, datasets and artifacts live: one backend per URI scheme.

URI parsing is the contract's (``finetune_api.uri``, pure and torch-free, so the operator
validates URIs the same way). Here is the I/O, layered so that imports run one way:
``backends`` (the scheme registry) above ``local``, ``hub`` and ``s3`` (one backend
each), above ``credentials`` and ``cache``, above ``store`` (the shared types). The
``.importlinter`` file holds that order.
"""
