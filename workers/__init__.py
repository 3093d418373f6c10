"""Celery job modules run by ``celery -A agentrl worker``: sampling (and evaluation)."""
