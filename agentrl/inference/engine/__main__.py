"""``python -m agentrl.inference.engine --model PATH --port N``."""

from agentrl.inference.engine.server import main

if __name__ == "__main__":
    main()
