"""spotkeeper: keeps a Hugging Face TGI endpoint alive on EC2 Spot GPUs.

The shared package every function uses: event models, decisions (``logic``), AWS adapters,
the TGI client, the state store and alerts. Handlers in ``functions/`` stay thin.
"""
