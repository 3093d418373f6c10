"""Celery job modules run by ``celery -A agentrl worker`` (sampling; evaluation lives next to it)."""
