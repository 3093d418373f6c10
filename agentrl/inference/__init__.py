"""Inference: engines, their lifecycle, the service registry and request routing.

- ``engine/`` — the CPU engine: an OpenAI-compatible FastAPI server over torch + transformers
  (``ModelRunner`` decodes padded batches with a KV cache, ``BatchScheduler`` batches concurrent
  requests) that answers SGLang's control endpoints. ``agentrl engine serve --model PATH --port N``.
- ``sglang.py`` — the ``sglang.launch_server`` command built from the config, and
  ``EngineClient``, the HTTP control calls shared by both engines.
- ``manager.py`` — ``InferenceManager``: per DP group the TP-rank-0 process starts the engine,
  registers an ``InferenceService`` UP, heartbeats, restarts it when it dies, releases/resumes
  memory and updates weights.
- ``protocol.py`` — SGLang 0.5.23's ``/v1/chat/completions`` wire format: the request body
  (``return_token_ids``), and the reply's prompt/completion ids, logprobs, finish reason and
  weight version; aborted replies raise a transient error.
- ``routing.py`` — ``Router.create_chat_completion``: least-loaded live service, waits while all
  are DOWN, retries transient errors, logs one ``DispatchedSamplingTask`` per call.
- ``services.py`` — endpoints that run elsewhere: external OpenAI-compatible APIs and SGLang
  nodes (``agentrl services add URL --model NAME --kind external|sglang``).
- ``model_files.py`` — where the default SmolLM2 weights come from.
"""
