"""Real-time serving of a trained artifact: ``seqrec serve ARTIFACT`` (FastAPI on uvicorn).

Kept import-light: the ``seqrec`` CLI imports ``seqrec.serve.cli`` for every command, and only
``seqrec serve`` itself loads FastAPI, uvicorn and the store clients. Nothing here imports
``seqrec.train``.
"""
