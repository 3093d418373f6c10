"""Beat's schedule: epoch pushes and housekeeping, run by ``celery -A agentrl beat``."""
