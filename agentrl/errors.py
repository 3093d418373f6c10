"""The error tree of agentrl.

One root, :class:`AgentRLError`; one base per subsystem (configuration, databases, object store,
rollout, inference, training); leaves carry the fields a caller needs to act on them (file, line,
key, record id). Catch a base to handle a whole subsystem.
"""

from __future__ import annotations

from typing import Any


class AgentRLError(Exception):
    """Root of every error agentrl raises on purpose."""


# --- configuration -------------------------------------------------------------------------------


class ConfigError(AgentRLError):
    """Raised when a configuration value is unknown, of the wrong type or out of range.

    Attributes:
        key: the offending field (``""`` when the whole file is unreadable).
        value: the value given, as read.
        reason: what is wrong and how to fix it.
        file: the YAML file the value came from, when it came from one.
        line: 1-based line in ``file``, when known.
    """

    def __init__(
        self,
        key: str,
        value: Any,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.key, self.value, self.reason, self.file, self.line = key, value, reason, file, line
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}config key {key!r} = {value!r}: {reason}")


# --- databases -----------------------------------------------------------------------------------


class DatabaseError(AgentRLError):
    """Base of errors from MongoDB, Redis and the document layer."""


class NoTaskAvailableError(DatabaseError):
    """Raised when a sampler asks for a task and none can be claimed (the AgentRL guide's name)."""


class DuplicateModelError(DatabaseError):
    """Raised when ``register_new_model`` is given a document class whose name is taken.

    Attributes:
        name: the registered name that collides.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a document model named {name!r} is already registered")


class UnknownModelError(DatabaseError):
    """Raised when a stored document names a type (``_type``) that no registered class has.

    Attributes:
        name: the stored type name.
        doc_id: the document's ``_id``.
    """

    def __init__(self, name: str, doc_id: Any) -> None:
        self.name, self.doc_id = name, doc_id
        super().__init__(
            f"document {doc_id!r} has type {name!r}, which is not registered; import the module "
            "that defines it (decorated with @register_new_model) before loading it"
        )


class DocumentNotFoundError(DatabaseError):
    """Raised when a document looked up by id does not exist.

    Attributes:
        collection: the MongoDB collection.
        doc_id: the id looked up.
    """

    def __init__(self, collection: str, doc_id: Any) -> None:
        self.collection, self.doc_id = collection, doc_id
        super().__init__(f"no document {doc_id!r} in collection {collection!r}")


class ServiceUnavailableError(DatabaseError):
    """Raised when Redis or MongoDB cannot be reached; the message says how to start it.

    Attributes:
        url: the URL tried (credentials removed).
    """

    def __init__(self, url: str, hint: str) -> None:
        self.url = url
        super().__init__(f"cannot reach {url}: {hint}")


class LockNotOwnedError(DatabaseError):
    """Raised when a lock is released or extended by a holder whose token no longer owns it.

    Attributes:
        name: the lock's Redis key.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"lock {name!r} is not held by this owner (expired or taken over)")


# --- object store --------------------------------------------------------------------------------


class ObjectStoreError(AgentRLError):
    """Base of object-store errors."""


class ObjectNotFoundError(ObjectStoreError):
    """Raised when a stored object reference points at nothing.

    Attributes:
        ref: the reference (``objstore://...``).
    """

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"object {ref!r} not found in the object store")


# --- rollout -------------------------------------------------------------------------------------


class RolloutError(AgentRLError):
    """Base of errors from sampling: samplers, datasets, schedulers."""


class UnknownSamplerError(RolloutError):
    """Raised when a message or a call names a sampler that is not registered.

    Attributes:
        name: the name asked for.
        known: the registered names.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"no sampler registered as {name!r}; registered: {sorted(known)}")


class DatasetError(RolloutError):
    """Raised when a dataset file has a bad line or field.

    Attributes:
        file: the dataset file.
        line: 1-based line number (``None`` for whole-file errors).
        field: the missing or invalid field, when one is to blame.
    """

    def __init__(
        self, file: str, line: int | None, reason: str, *, field: str | None = None
    ) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, reason
        where = f"{file}:{line}" if line is not None else file
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {reason}")


# --- inference -----------------------------------------------------------------------------------


class InferenceError(AgentRLError):
    """Base of errors from inference engines, the manager and routing."""


class EngineStartError(InferenceError):
    """Raised when an inference engine does not become healthy in time.

    Attributes:
        endpoint: the URL polled.
        log_tail: the last lines the engine printed.
    """

    def __init__(self, endpoint: str, reason: str, log_tail: str = "") -> None:
        self.endpoint, self.log_tail = endpoint, log_tail
        super().__init__(f"engine at {endpoint} failed to start: {reason}\n{log_tail}")


class NoServiceAvailableError(InferenceError):
    """Raised when no inference service is UP for a model within the wait limit.

    Attributes:
        model: the model asked for.
        waited_s: seconds waited, in seconds.
    """

    def __init__(self, model: str, waited_s: float) -> None:
        self.model, self.waited_s = model, waited_s
        super().__init__(f"no UP inference service serves {model!r} after {waited_s:.0f} s")


# --- training ------------------------------------------------------------------------------------


class TrainingError(AgentRLError):
    """Base of errors from data conversion, losses and the trainer."""


class AlignmentError(TrainingError):
    """Raised when behaviour logprobs or token ids do not line up with the tokenized sample.

    Attributes:
        record_id: the Record being converted.
    """

    def __init__(self, record_id: str, reason: str) -> None:
        self.record_id = record_id
        super().__init__(f"record {record_id}: {reason}")
