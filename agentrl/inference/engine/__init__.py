"""The CPU inference engine: an OpenAI-compatible server with SGLang's control endpoints.

``runner`` (model + batched decoding), ``scheduler`` (dynamic batching), ``app`` (FastAPI),
``server`` (:func:`serve`), ``__main__`` (``python -m agentrl.inference.engine``).
"""
