"""Redis-backed `DistributedLock` and `DistributedCounter`.

The lock wraps redis-py's :class:`redis.lock.Lock`: an owner token and an expiry, so a holder that
dies (even by SIGKILL) stops blocking others after ``ttl_s`` seconds. Callers name the key; the
run's key names are :class:`agentrl.rollout.ledger.RedisKeys` (``<key_prefix>:lock:<name>``).
"""

from __future__ import annotations

from types import TracebackType

import redis
from redis.exceptions import LockError
from redis.exceptions import LockNotOwnedError as RedisLockNotOwnedError

from agentrl.errors import LockNotOwnedError


class DistributedLock:
    """A mutual-exclusion lock shared by every process that uses the same Redis.

    Args:
        client: a redis-py client.
        key: the lock's Redis key.
        ttl_s: seconds after which a lock whose holder stopped extending it expires.

    Use ``with lock:`` (blocks until acquired) or :meth:`acquire` with ``blocking=False``.
    """

    def __init__(self, client: redis.Redis, key: str, ttl_s: float = 30.0) -> None:
        self.key = key
        self._lock = client.lock(self.key, timeout=ttl_s, thread_local=False)

    def acquire(self, blocking: bool = True, timeout_s: float | None = None) -> bool:
        """Try to take the lock.

        Args:
            blocking: wait for it; when False return at once.
            timeout_s: longest wait in seconds (``None``: forever).

        Returns:
            Whether the lock is now held by this object.
        """
        return bool(self._lock.acquire(blocking=blocking, blocking_timeout=timeout_s))

    def release(self) -> None:
        """Release the lock.

        Raises:
            LockNotOwnedError: it expired or another holder owns it now.
        """
        try:
            self._lock.release()
        except (RedisLockNotOwnedError, LockError) as exc:
            raise LockNotOwnedError(self.key) from exc

    def extend(self, ttl_s: float) -> None:
        """Reset the expiry to ``ttl_s`` seconds from now (a heartbeat).

        Raises:
            LockNotOwnedError: it expired or another holder owns it now.
        """
        try:
            self._lock.extend(ttl_s, replace_ttl=True)
        except (RedisLockNotOwnedError, LockError) as exc:
            raise LockNotOwnedError(self.key) from exc

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return bool(self._lock.locked())

    def owned(self) -> bool:
        """Whether this object holds the lock now."""
        return bool(self._lock.owned())

    def __enter__(self) -> DistributedLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class DistributedCounter:
    """An integer shared by every process that uses the same Redis (atomic ``INCRBY``).

    It lives in Redis only: what must survive a Redis restart (the global step) is kept in
    MongoDB instead (:class:`agentrl.rollout.ledger.GlobalStep`).

    Args:
        client: a redis-py client.
        key: the counter's Redis key.
    """

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def get(self) -> int:
        """The current value (0 if never set)."""
        value = self.client.get(self.key)
        return int(value) if value is not None else 0

    def incr(self, amount: int = 1) -> int:
        """Add ``amount`` atomically and return the new value."""
        return int(self.client.incrby(self.key, amount))

    def set(self, value: int) -> None:
        """Set the value (used when resuming from a checkpoint)."""
        self.client.set(self.key, int(value))
