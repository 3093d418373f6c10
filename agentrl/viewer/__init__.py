"""The trajectory viewer: ``agentrl viewer CONFIG`` serves a read-only web page over a run's
MongoDB and its ``runs/<name>/`` files.

- :mod:`agentrl.viewer.app`: the FastAPI app and its routes (server-rendered Jinja2 pages);
- :mod:`agentrl.viewer.queries`: the MongoDB reads; :mod:`agentrl.viewer.runs`: the run files;
- :mod:`agentrl.viewer.pages`: a record's turns, messages and coloured tokens;
- :mod:`agentrl.viewer.tokens`: token text from the run's tokenizer, loaded once, lazily;
- :mod:`agentrl.viewer.auth`: Flower-style basic auth, required off loopback;
- :mod:`agentrl.viewer.cli`: the command.
"""
