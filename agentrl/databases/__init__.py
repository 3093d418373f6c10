"""Documents, stores, locks and object stores: everything that persists.

Public names follow the AgentRL guide: ``Task``, ``DispatchedSamplingTask``, ``Record``,
``InferenceService``, ``register_new_model``, ``init_databases``, ``NoTaskAvailableError``.
"""

from agentrl.databases.connections import Databases, connect_redis, init_databases, mongo_uri
from agentrl.databases.documents import (
    FINAL_RECORD_STATUSES,
    RUN_STATE_ID,
    DispatchedSamplingTask,
    DispatchStatus,
    Document,
    ErrorKind,
    InferenceService,
    Record,
    RecordStatus,
    RunState,
    ServiceStatus,
    Task,
    TaskStatus,
    calls_token_exact,
    register_new_model,
    utcnow,
)
from agentrl.databases.locks import DistributedCounter, DistributedLock
from agentrl.databases.store import AsyncMongoStore, MongoStore
from agentrl.errors import NoTaskAvailableError

__all__ = [
    "AsyncMongoStore",
    "calls_token_exact",
    "Databases",
    "DispatchStatus",
    "DispatchedSamplingTask",
    "ErrorKind",
    "FINAL_RECORD_STATUSES",
    "RUN_STATE_ID",
    "RunState",
    "DistributedCounter",
    "DistributedLock",
    "Document",
    "InferenceService",
    "MongoStore",
    "NoTaskAvailableError",
    "Record",
    "RecordStatus",
    "ServiceStatus",
    "Task",
    "TaskStatus",
    "connect_redis",
    "init_databases",
    "mongo_uri",
    "register_new_model",
    "utcnow",
]
