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
        what = f"config key {key!r} = {value!r}: " if key else ""
        super().__init__(f"{where}{what}{reason}")


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


class TrajectoryLeasedError(NoTaskAvailableError, RolloutError):
    """Raised when a trajectory is claimed while another holder's lease on it is live (a
    redelivered message whose first copy still runs).

    Attributes:
        record_id: the Record identity ``task_id:traj_id:epoch``.
    """

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"trajectory {record_id} is leased by a live sampler; not started twice")


class TrajectoryFinishedError(NoTaskAvailableError, RolloutError):
    """Raised when a trajectory is claimed whose Record is already scored (a late redelivery).

    Attributes:
        record_id: the Record identity ``task_id:traj_id:epoch``.
        status: the Record's status.
    """

    def __init__(self, record_id: str, status: str) -> None:
        self.record_id, self.status = record_id, status
        super().__init__(f"trajectory {record_id} is already {status}; nothing to sample")


class InfrastructureError(RolloutError):
    """Raised by a sampler or its tools when something outside the sampler failed: a tool
    server died, an LLM judge or environment did not answer.

    The ledger classifies it (and its subclasses) as an ``infrastructure`` failure: the
    trajectory is started again later and never scored on it (see
    :class:`~agentrl.databases.ErrorKind`).
    """


class LeaseLostError(RolloutError):
    """Raised when an attempt of a trajectory is no longer the one that holds it: its lease
    lapsed (the worker froze past ``lease_ttl_s``) and a newer attempt started. The write that
    found out was refused; the stale copy stops.

    Attributes:
        record_id: the Record identity ``task_id:traj_id:epoch``.
        attempt: the stale attempt's number.
    """

    def __init__(self, record_id: str, attempt: int, reason: str = "") -> None:
        self.record_id, self.attempt = record_id, attempt
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"attempt {attempt} of trajectory {record_id} lost its lease to a newer attempt"
            f"{detail}; its writes are refused"
        )


class InvalidOutputError(RolloutError):
    """Raised when a sampler's output cannot be stored: a value BSON cannot hold, or a Record
    still over MongoDB's document limit after large values went to the object store.

    Attributes:
        record_id: the Record identity (``""`` when not known yet).
        field: the dotted path of the offending field (``meta.scores.0``), or ``""``.
        reason: what is wrong and what to do.
    """

    def __init__(self, record_id: str, field: str, reason: str) -> None:
        self.record_id, self.field, self.reason = record_id, field, reason
        where = f" field {field!r}" if field else ""
        super().__init__(f"record {record_id or '?'}{where}: {reason}")
class JudgeUnavailableError(InfrastructureError):
    """Raised when the LLM judge of a reward gives no verdict: its service is down or unknown,
    the call fails, or it answers without a yes/no verdict ``judge_max_attempts`` times.

    Attributes:
        model: the judge's served model name.
        record_id: the record being judged.
        reason: what went wrong (the last error or reply).
    """

    def __init__(self, model: str, record_id: str, reason: str) -> None:
        self.model, self.record_id, self.reason = model, record_id, reason
        super().__init__(f"judge {model!r} gave no verdict for record {record_id}: {reason}")


class ToolServerUnavailableError(InfrastructureError):
    """Raised when an MCP tool server cannot be reached and reconnecting does not help: it does
    not start or answer, or it dies again on the retried call.

    Attributes:
        server: the server's name in mcp.json.
        reason: the transport error.
    """

    def __init__(self, server: str, reason: str) -> None:
        self.server, self.reason = server, reason
        super().__init__(f"MCP server {server!r} is unavailable: {reason}")


class ForeignClaimError(NoTaskAvailableError, RolloutError):
    """Raised when a sampling message names a trajectory this run's database does not hold (a
    message of another run or database under the same key prefix, or left from before
    ``--fresh``): it is acknowledged and dropped.

    Attributes:
        record_id: the Record identity the message names.
    """

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(
            f"no record {record_id} in this run's database: a message of another run; dropped")


# --- rollout: osworld environments ---------------------------------------------------------------


class AgentEnvError(RolloutError):
    """Base of errors from agent environments (OSWorld VMs and their control servers)."""


class NoEnvironmentAvailableError(AgentEnvError):
    """Raised when no registered environment could be leased within the wait limit.

    Attributes:
        kind: the environment type asked for (e.g. ``OSWorldEnv``).
        waited_s: seconds waited, in seconds.
        registered: environments of that kind that are registered (leased or not).
    """

    def __init__(self, kind: str, waited_s: float, registered: int) -> None:
        self.kind, self.waited_s, self.registered = kind, waited_s, registered
        hint = (
            "none is registered: run setup_osworld_envs (osworld.env_urls / osworld.provider)"
            if registered == 0
            else "all are leased; add envs or lower max_concurrent_samples_per_process"
        )
        super().__init__(f"no {kind} free after {waited_s:.0f} s ({registered} registered; {hint})")


class EnvLeaseLostError(AgentEnvError):
    """Raised when an env lease expired or was taken over while its holder still ran.

    Attributes:
        env_name: the environment's unique name.
        owner: the lease owner that lost it.
    """

    def __init__(self, env_name: str, owner: str) -> None:
        self.env_name, self.owner = env_name, owner
        super().__init__(f"lease on env {env_name!r} held by {owner!r} expired or was taken over")


class EnvRequestError(AgentEnvError):
    """Raised when an env control server does not answer or answers with an error.

    Attributes:
        url: the URL called.
        reason: what went wrong (status code and body, or the transport error).
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"env control server {url}: {reason}")


class ProviderUnavailableError(AgentEnvError):
    """Raised when a desktop-env provider is configured but the package cannot be imported.

    Attributes:
        provider: the configured provider (docker, vmware, aws...).
    """

    def __init__(self, provider: str, cause: str) -> None:
        self.provider = provider
        super().__init__(
            f"osworld.provider={provider!r} needs the desktop-env package "
            f"(`pip install desktop-env`, see docs/osworld.md): {cause}"
        )


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


class WeightUpdateError(InferenceError):
    """Raised when an engine cannot load new weights (bad directory, tensor or shape mismatch).

    Attributes:
        model_path: the weights directory.
        reason: what went wrong.
    """

    def __init__(self, model_path: str, reason: str) -> None:
        self.model_path, self.reason = model_path, reason
        super().__init__(f"cannot load weights from {model_path}: {reason}")


class InferenceRequestError(InferenceError):
    """Raised when an LLM call fails (after retries for transient errors).

    Attributes:
        endpoint: the service URL called.
        status_code: the HTTP status, when the service answered.
        transient: whether a retry may succeed (connection errors, 429, 5xx).
    """

    def __init__(
        self, endpoint: str, reason: str, status_code: int | None = None, transient: bool = False
    ) -> None:
        self.endpoint, self.status_code, self.transient = endpoint, status_code, transient
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"request to {endpoint} failed{status}: {reason}")


class UnusableResponseError(InferenceRequestError):
    """Raised when a service answers HTTP 200 with a reply that must not be scored or trained:
    ``finish_reason: "abort"`` (an interrupted request, e.g. by ``/pause_generation``) or no
    choices. It is transient: the call is retried (``request_max_attempts``).

    Attributes:
        endpoint: the service URL called.
        finish_reason: the finish reason of the reply (``None`` when it had no choices).
    """

    def __init__(self, endpoint: str, reason: str, finish_reason: str | None = None) -> None:
        super().__init__(endpoint, reason, status_code=200, transient=True)
        self.finish_reason = finish_reason


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


class UnknownConverterError(TrainingError):
    """Raised when ``record_converter`` names no registered Record-to-data converter.

    Attributes:
        name: the name asked for.
        known: the registered names.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(
            f"no record converter registered as {name!r}; registered: {sorted(known)} "
            "(register one with @register_record_converter(name))"
        )


class UnknownLossError(TrainingError):
    """Raised when ``loss_calculater`` names no registered loss function.

    Attributes:
        name: the name asked for.
        known: the registered names.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"no loss registered as {name!r}; registered: {sorted(known)}")


class CheckpointError(TrainingError):
    """Raised when a checkpoint cannot be written or read back.

    Attributes:
        path: the checkpoint directory.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"checkpoint {path}: {reason}")


class OrphanedRunStateError(CheckpointError):
    """Raised when a run has no checkpoint but its database holds records an earlier run trained.

    Starting again from the base model would mix that run's data and step count into this one.

    Attributes:
        path: the checkpoint directory that holds nothing.
        db_name: the MongoDB database with the earlier run's records.
        trained_records: how many records were already trained on.
    """

    def __init__(self, path: str, db_name: str, trained_records: int) -> None:
        self.db_name, self.trained_records = db_name, trained_records
        super().__init__(
            path,
            f"no checkpoint, but database {db_name!r} holds {trained_records} record(s) trained "
            "by an earlier run of this name: start over with `agentrl run CONFIG --fresh` (or "
            "another name/db_name/key_prefix), or put the earlier run's checkpoints back",
        )


class ChildProcessFailedError(TrainingError):
    """Raised when a child process of ``agentrl run`` (engine, worker, beat) exits early.

    Attributes:
        name: the child's role (``worker``, ``beat``...).
        returncode: its exit status.
        log_file: where its output went.
        log_tail: the last lines it printed.
    """

    def __init__(self, name: str, returncode: int | None, log_file: str, log_tail: str) -> None:
        self.name, self.returncode, self.log_file, self.log_tail = (
            name, returncode, log_file, log_tail,
        )
        super().__init__(
            f"child process {name!r} exited with status {returncode} (log: {log_file})\n{log_tail}"
        )



class TrackerUnavailableError(TrainingError):
    """Raised when ``report_to`` names an experiment tracker whose library is not installed.

    Attributes:
        name: the tracker (``tensorboard``, ``wandb``, ``mlflow``, ``swanlab``).
        package: the Python package it needs.
    """

    def __init__(self, name: str, package: str) -> None:
        self.name, self.package = name, package
        super().__init__(
            f"report_to names {name!r}, but its library {package!r} is not installed: "
            "pip install 'agentrl[trackers]' (or drop it from report_to)"
        )

# --- operations (evaluation jobs, status) --------------------------------------------------------


class OperationsError(AgentRLError):
    """Base of errors from ad-hoc evaluation jobs, the status view and the trajectory viewer."""


class EvaluationError(OperationsError):
    """Raised when an evaluation job cannot run: a ``train`` split, an unknown sampler, an
    unreadable dataset, or a service given without a model name.

    The exception's ``args`` are ``(evaluation_id, reason)``, so it survives the trip through the
    Celery result backend (JSON) and ``AsyncResult.get()`` raises it again in the caller.

    Attributes:
        evaluation_id: the evaluation (``""`` when it was refused before it got an id).
        reason: what is wrong and how to fix it.
    """

    def __init__(self, evaluation_id: str, reason: str) -> None:
        super().__init__(evaluation_id, reason)
        self.evaluation_id, self.reason = evaluation_id, reason

    def __str__(self) -> str:
        where = f"evaluation {self.evaluation_id}: " if self.evaluation_id else "evaluation: "
        return where + self.reason


class ViewerAuthError(OperationsError):
    """Raised when the trajectory viewer's ``--basic-auth`` is malformed, or when it is asked to
    bind a non-loopback address without credentials.

    Attributes:
        host: the address asked for (``None`` for a malformed ``--basic-auth``).
        reason: what is wrong and how to fix it.
    """

    def __init__(self, reason: str, host: str | None = None) -> None:
        self.host, self.reason = host, reason
        super().__init__(reason)
