"""`AgentTrainingConfig`: the one typed configuration of agentrl.

Values come, lowest precedence first, from the field defaults, a YAML file, environment variables
``AGENTRL_<FIELD>`` (upper case), and explicit overrides (CLI flags). Each field's description is
written once here (and, for the samplers' sections, in :mod:`agentrl.config_sections`) and reused
as the CLI's help text. A sampler's settings sit in its section: ``mcp: {max_turns: 8}`` in YAML,
``AGENTRL_MCP__MAX_TURNS=8`` in the environment, ``--mcp.max-turns 8`` as a flag.

A wrong value fails at load with :class:`~agentrl.errors.ConfigError` naming the key, the value,
the reason and, for YAML, the line; an unknown key or flag gets the closest known name
("did you mean ...", :func:`difflib.get_close_matches` over the field names). A flat key that
moved into a section (``format_reward``, ``osworld_max_steps``...) still loads, with a
``FutureWarning`` naming its new key.

Processes started by ``agentrl run`` (workers, beat) find the YAML file through the environment
variable ``AGENTRL_CONFIG``.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agentrl.config_sections import (
    DEPRECATED_KEYS,
    SECTIONS,
    MathSettings,
    MCPSettings,
    OSWorldSettings,
)
from agentrl.errors import ConfigError

CONFIG_ENV_VAR = "AGENTRL_CONFIG"
"""Environment variable naming the YAML file that :func:`load_config` reads by default."""

ENV_PREFIX = "AGENTRL_"
"""Prefix of the environment variables of config fields."""

ENV_NESTED_DELIMITER = "__"
"""Separator of section and field in environment variables (``AGENTRL_MCP__MAX_TURNS``)."""

AGENTRL_HOME = Path(os.environ.get("AGENTRL_HOME", Path.home() / ".agentrl"))
"""Where embedded state lives by default (MongoDB data, objects, model cache)."""

TrackerName = Literal["tensorboard", "wandb", "mlflow", "swanlab"]
"""The experiment trackers ``report_to`` can name."""

_yaml_values: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_values", default=None)


class AgentTrainingConfig(BaseSettings):
    """Every setting of a run: services, data, model, sampling, inference and training.

    Field names follow the AgentRL sampling guide (``num_generations``, ``target_concurrency``,
    ``loss_calculater``...). Construct it with :func:`load_config` to get YAML + env + overrides.

    Raises:
        pydantic.ValidationError: when constructed directly with a bad value (``load_config``
            turns it into :class:`~agentrl.errors.ConfigError`).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid",
        validate_assignment=True, case_sensitive=False,
    )

    # --- run -------------------------------------------------------------------------------------
    name: str = Field("agentrl", description="Run name: output goes to runs/<name>/.")
    output_dir: Path = Field(Path("runs"), description="Directory holding runs/<name>/ outputs.")
    seed: int = Field(0, description="Random seed for sampling order, engines and training.")

    # --- services --------------------------------------------------------------------------------
    db_connection_string: str = Field(
        "",
        description="MongoDB URI; empty starts the embedded MongoDB-wire server (nx-27017).",
    )
    db_name: str = Field("agentrl", description="MongoDB database name.")
    embedded_db_dir: Path = Field(
        AGENTRL_HOME / "mongo", description="Data directory of the embedded MongoDB-wire server."
    )
    oss_connection_string: str = Field(
        "",
        description=(
            "Object store URL 's3://ACCESS:SECRET@HOST:PORT/BUCKET[?secure=true]' (MinIO/S3); "
            "empty uses a local directory."
        ),
    )
    object_store_dir: Path = Field(
        AGENTRL_HOME / "objects", description="Local object store directory (the default store)."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for locks, counters and leases."
    )
    broker_url: str = Field("", description="Celery broker URL; empty uses redis_url.")
    result_backend: str = Field("", description="Celery result backend; empty uses redis_url.")
    key_prefix: str = Field("agentrl", description="Prefix of every Redis key and queue name.")
    visibility_timeout_s: int = Field(
        60,
        ge=1,
        description=(
            "Redis broker visibility timeout in seconds: a message taken by a worker that died "
            "before handing it to a trajectory lease comes back after this long. A live worker "
            "acknowledges a message within the 5 s hand-off, so a minute is ample; a message "
            "that comes back anyway is fenced by the trajectory's lease."
        ),
    )
    task_events: bool = Field(
        False,
        description=(
            "Workers send Celery task events from their start, and beat a task-sent event per "
            "job. Off by default (about 3 Redis commands per trajectory): a running Flower "
            "turns the workers' task events on by itself within 5 s (its enable_events)."
        ),
    )
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Seconds a trajectory lease lives without a heartbeat."
    )
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="Seconds between lease and service heartbeats."
    )

    # --- data ------------------------------------------------------------------------------------
    train_file: str = Field("", description="Training dataset file (JSONL or JSON).")
    eval_file: str = Field(
        "",
        description="Held-out evaluation dataset file (JSONL or JSON): `agentrl run` evaluates "
        "it before the first step, every eval_every_steps and after the last step.",
    )
    eval_skip_tasks: int = Field(
        0,
        ge=0,
        description="Skip the first N tasks of eval_file (held-out tasks from the file that "
        "training reads: at least max_train_tasks when eval_file is train_file).",
    )
    max_eval_tasks: int = Field(
        64, ge=0, description="Tasks of eval_file one evaluation of `agentrl run` samples (0: all)."
    )
    eval_every_steps: int = Field(
        0, ge=0, description="Evaluate eval_file every N optimizer steps too (0: before and after)."
    )
    eval_greedy: bool = Field(
        True, description="Evaluate greedily (temperature 0) too, besides the sampling temperature."
    )
    eval_timeout_s: float = Field(
        1800.0, gt=0, description="Seconds one held-out evaluation of `agentrl run` may take."
    )
    max_train_tasks: int = Field(
        0, ge=0, description="Use only the first N training tasks (0: all)."
    )
    skip_bad_lines: bool = Field(
        True, description="Skip malformed dataset lines (reported with file:line), not fail."
    )
    sampler: str = Field(
        "math", description="Registered name of the sampler used by `agentrl run`."
    )

    # --- model -----------------------------------------------------------------------------------
    model_name: str = Field(
        "SmolLM2-135M-Instruct", description="Served model name that samplers ask for."
    )
    model_name_or_path: str = Field(
        "",
        description="HF model directory to train and serve; empty uses SmolLM2-135M-Instruct.",
    )

    # --- sampling --------------------------------------------------------------------------------
    num_generations: int = Field(
        4, ge=1, description="Trajectories per task per epoch (group size)."
    )
    num_eval_generations: int = Field(1, ge=1, description="Trajectories per task for eval splits.")
    num_train_epochs: int = Field(1, ge=1, description="Epochs of the training split to sample.")
    max_new_tokens: int = Field(512, ge=1, description="Maximum tokens generated per LLM call.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    target_concurrency: int = Field(
        64, ge=1, description="Running requests allowed per inference service."
    )
    max_concurrent_samples_per_process: int = Field(
        64,
        ge=1,
        description="Trajectories one sampling worker process runs at once (coroutines on its "
        "event loop, not threads).",
    )
    evaluation_slots_per_process: int = Field(
        8,
        ge=1,
        description="Trajectories of other splits (evaluations) one worker process runs besides "
        "the training ones, so a training epoch never starves them.",
    )
    sync_sampling: bool = Field(
        False, description="Sample the next epoch only after the trainer consumed this one."
    )
    resample_error_records: bool = Field(
        True, description="Give a failed trajectory's claim back so it is sampled again."
    )
    max_buffered_records: int = Field(
        1024, ge=1, description="Stop pushing epochs while this many READY records wait untrained."
    )
    max_staleness: int | None = Field(
        None,
        ge=0,
        description=(
            "Bounded off-policyness (steps): train tasks are released for sampling only while "
            "the records they produce can be trained within this many steps of the weights "
            "that sample them; older groups are dropped as stale. 0: synchronous on-policy; "
            "unset: unbounded."
        ),
    )

    # --- sampler sections ------------------------------------------------------------------------
    math: MathSettings = Field(
        default_factory=MathSettings, description="Settings of the math sampler (section)."
    )
    osworld: OSWorldSettings = Field(
        default_factory=OSWorldSettings, description="Settings of the osworld sampler (section)."
    )
    mcp: MCPSettings = Field(
        default_factory=MCPSettings, description="Settings of the mcp tool sampler (section)."
    )
    mcp_config: str = Field(
        "",
        description=(
            "mcp.json naming the MCP servers whose tools samplers may call "
            '({"mcpServers": {name: {command, args, env} | {url, headers}}}).'
        ),
    )

    # --- jobs (Celery, beat, leases) --------------------------------------------------------------
    beat_interval_s: float = Field(
        5.0, gt=0, description="Seconds between beat's push_epoch(split) checks."
    )
    housekeeping_interval_s: float = Field(
        10.0, gt=0, description="Seconds between re-enqueues of trajectories whose lease expired."
    )
    max_sample_attempts: int = Field(
        3,
        ge=1,
        description=(
            "Attempts of a trajectory (its starts, worker deaths included; infrastructure "
            "failures it reported are not charged) before it is FAILED and leaves its group."
        ),
    )
    max_infrastructure_retries: int = Field(
        20, ge=0, description="Further attempts after infrastructure failures before FAILED."
    )
    infrastructure_retry_backoff_s: float = Field(
        5.0,
        gt=0,
        description="Wait before retrying after an infrastructure failure (doubles, max 300 s).",
    )
    mongo_outage_timeout_s: float = Field(
        300.0, gt=0, description="Seconds a sampler's MongoDB writes wait out an outage."
    )
    call_log_linger_s: float = Field(
        0.1,
        ge=0.0,
        description="Seconds a call-log write waits to share its MongoDB round trip with others.",
    )
    status_write_linger_s: float = Field(
        0.5,
        ge=0.0,
        description="Scoring that lasts longer than this stores the Record 'scoring' meanwhile.",
    )
    externalize_threshold_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Record values larger than this (bytes) go to the object store.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0.0,
        description="Seconds a stopping worker lets running trajectories finish, then hands "
        "the rest back.",
    )
    train_claim_ttl_s: float = Field(
        600.0, gt=0, description="Seconds a trainer's claim on records lives without renewal."
    )
    sampler_modules: str = Field(
        "",
        description=(
            "Comma-separated modules a sampling worker imports at start to register samplers "
            "and task classes (e.g. 'mypkg.samplers')."
        ),
    )
    eval_epochs: int = Field(1, ge=1, description="Epochs pushed for a split other than train.")

    # --- inference -------------------------------------------------------------------------------
    engine: Literal["auto", "sglang", "cpu"] = Field(
        "auto", description="Inference engine: SGLang on GPUs, the CPU engine otherwise (auto)."
    )
    inf_tp_size: int = Field(1, ge=1, description="Tensor-parallel size of each inference engine.")
    inf_ep_size: int = Field(1, ge=1, description="Expert-parallel size of each inference engine.")
    inf_mem_ratio: float = Field(
        0.8, gt=0.0, le=1.0, description="GPU memory fraction for SGLang (--mem-fraction-static)."
    )
    inf_weights_cpu_backup: bool = Field(
        True,
        description=(
            "Keep a CPU copy of the served weights across release/resume of the engine's memory "
            "(SGLang --enable-weights-cpu-backup); off: the manager pushes the weights again "
            "after each resume."
        ),
    )
    engine_host: str = Field("127.0.0.1", description="Host the inference engine binds.")
    engine_base_port: int = Field(
        30000, ge=1024, le=65000, description="First engine port; DP group g uses base + 10*g."
    )
    engine_start_timeout_s: float = Field(
        600.0, gt=0, description="Seconds to wait for an engine's /health_generate."
    )
    engine_max_batch_size: int = Field(
        64, ge=1, description="Most sequences the CPU engine decodes together in one batch."
    )
    engine_batch_wait_s: float = Field(
        0.005, ge=0.0, description="Seconds the CPU engine waits for requests to join a batch."
    )
    engine_num_threads: int = Field(
        0, ge=0, description="torch threads of the CPU engine (0: half the CPU cores)."
    )
    service_wait_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Seconds an LLM call waits while no service is UP (weight update).",
    )
    service_heartbeat_ttl_s: float = Field(
        60.0,
        gt=0,
        description="Seconds after its last heartbeat that a service stops getting traffic.",
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Seconds one HTTP call to an inference service may take."
    )
    request_max_attempts: int = Field(
        3,
        ge=1,
        description=(
            "Consecutive transient failures (connection, timeout, 429, 5xx, aborted reply) "
            "after which a service's circuit opens; calls wait out outages up to "
            "service_wait_timeout_s instead of failing."
        ),
    )
    circuit_open_s: float = Field(
        2.0, gt=0, description="Seconds an open circuit stops routing to a failing service "
        "before one probe request (doubles while it keeps failing, up to 60 s).",
    )
    release_drain_timeout_s: float = Field(
        60.0,
        ge=0.0,
        description="Seconds release_memory_occupation waits for in-flight requests, then pauses.",
    )
    external_services: list[dict[str, str]] = Field(
        default_factory=list,
        description=(
            "External OpenAI-compatible services to register: a list of {url, model, api_key} "
            "(JSON in env/flags)."
        ),
    )

    # --- training --------------------------------------------------------------------------------
    learning_rate: float = Field(1e-6, gt=0.0, description="AdamW learning rate.")
    epsilon: float = Field(0.2, ge=0.0, description="Lower clip range: ratio >= 1 - epsilon.")
    epsilon_higher: float = Field(
        0.08, ge=0.0, description="Extra upper clip range: ratio <= 1 + epsilon + epsilon_higher."
    )
    importance_weight_cap_ratio: float = Field(
        5.0, gt=0.0, description="Cap of the behaviour/policy importance weight."
    )
    out_of_date_decay: float = Field(
        0.0, ge=0.0, le=1.0, description="Trust-window shrink per step of staleness (0: off)."
    )
    max_trained_count: int = Field(1, ge=1, description="Times one READY record may be trained on.")
    consume_order: Literal["fresh", "fifo"] = Field(
        "fresh",
        description=(
            "Which READY groups a step takes first: the freshest (sampled with the newest "
            "weights) or the oldest (fifo)."
        ),
    )
    loss_calculater: Literal["GRPO", "GSPO", "MINIRL", "CISPO", "CrossEntropy"] = Field(
        "GRPO",
        description=(
            "Loss: GRPO, GSPO (sequence-level ratio), MINIRL (REINFORCE, detached capped "
            "ratio), CISPO (clipped IS weight) or CrossEntropy (SFT)."
        ),
    )
    loss_aggregation: Literal["token", "sequence"] = Field(
        "token",
        description=(
            "How GRPO/MINIRL/CISPO average per-token losses: over the batch's tokens (DAPO) or "
            "per sequence, then over sequences (GRPO, DeepSeekMath eq. 3)."
        ),
    )
    kl_coef: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the k3 KL penalty to the initial (reference) policy (0: off).",
    )
    cispo_epsilon_low: float = Field(
        1.0, ge=0.0, description="CISPO: IS weight >= 1 - this (1: no lower bound, as MiniMax-M1)."
    )
    cispo_epsilon_high: float = Field(
        0.28, ge=0.0, description="CISPO: IS weight <= 1 + this."
    )
    train_batch_size: int = Field(
        16, ge=1, description="Trajectories (records) per optimizer step; whole groups are taken."
    )
    micro_batch_size: int = Field(
        4, ge=1, description="Sequences per forward/backward pass (gradient accumulation)."
    )
    train_num_threads: int = Field(
        0, ge=0, description="Torch CPU threads of the trainer (0: torch's default, all cores)."
    )
    data_parallel: Literal["auto", "fsdp", "ddp", "none"] = Field(
        "auto",
        description=(
            "How trainer ranks share the model: fsdp (FSDP2: parameters, gradients and optimizer "
            "state sharded), ddp (a full copy per rank), none (one process); auto: fsdp with "
            "more than one rank, none with one."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute decoder-layer activations in backward (less memory, ~1/3 more "
        "compute).",
    )
    fsdp_cpu_offload: bool = Field(
        False,
        description="fsdp: keep parameter shards, gradients and optimizer state in CPU memory.",
    )
    export_final_model: bool = Field(
        True,
        description="At the end of a run, save the final policy with save_pretrained to "
        "<output_dir>/<name>/final_model.",
    )
    max_train_seq_len: int = Field(
        4096, ge=16, description="Longest training sequence in tokens; longer ones are truncated."
    )
    max_steps: int = Field(
        0, ge=0, description="Optimizer steps to run (0: until sampling has finished)."
    )
    grad_clip: float = Field(1.0, ge=0.0, description="Max global gradient norm (0: no clipping).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule after warmup (over max_steps)."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Steps of linear learning-rate warmup.")
    advantage_std_norm: bool = Field(
        True, description="Divide group-relative advantages by the group's score std (GRPO)."
    )
    advantage_leave_one_out: bool = Field(
        False, description="Baseline = mean of the other group members' scores (RLOO)."
    )
    gspo_epsilon: float = Field(
        3e-4, ge=0.0, description="GSPO lower clip range of the sequence-level ratio."
    )
    gspo_epsilon_higher: float = Field(
        1e-4, ge=0.0, description="GSPO extra upper clip range: ratio <= 1 + eps + eps_higher."
    )
    record_converter: str = Field(
        "default", description="Registered name of the Record-to-training-data converter."
    )
    checkpoint_dir: str = Field(
        "", description="Checkpoint directory (empty: <output_dir>/<name>/checkpoints)."
    )
    checkpoint_every_steps: int = Field(
        1, ge=1, description="Save optimizer state (a resumable checkpoint) every N steps."
    )
    keep_checkpoints: int = Field(
        2, ge=1,
        description="Resumable checkpoints kept on disk (plus the newest step's weights).",
    )
    checkpoint_optimizer_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16",
        description=(
            "dtype of the AdamW moments in checkpoints: bfloat16 (float32's range, half the "
            "bytes) or float32 (bit-exact resumes)."
        ),
    )
    train_poll_interval_s: float = Field(
        2.0, gt=0, description="Seconds between looks for READY records while waiting."
    )
    no_spread_warning_s: float = Field(
        60.0, gt=0, description="Say so when no group with score spread arrived for this long (s)."
    )
    report_to: Annotated[list[TrackerName], NoDecode] = Field(
        default_factory=list,
        description=(
            "Experiment trackers that get every logged metric besides metrics.jsonl: any of "
            "tensorboard, wandb, mlflow, swanlab (comma-separated in env/flags; offline by "
            "default, see README)."
        ),
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_report_to(cls, value: Any) -> Any:
        """Accept ``"tensorboard,wandb"`` or a JSON list (env variables and flags) as a list."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL: ``broker_url`` or, when empty, ``redis_url``."""
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        """The Celery result backend: ``result_backend`` or, when empty, ``redis_url``."""
        return self.result_backend or self.redis_url

    @model_validator(mode="before")
    @classmethod
    def _move_deprecated_keys(cls, values: Any) -> Any:
        """Move flat keys that became section fields into their section (direct construction)."""
        return migrate_deprecated(values, "argument") if isinstance(values, dict) else values

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = InitSettingsSource(settings_cls, init_kwargs=_yaml_values.get() or {})
        return (init_settings, env_settings, DeprecatedEnvSource(settings_cls), yaml_source)


class DeprecatedEnvSource(PydanticBaseSettingsSource):
    """Environment variables of flat keys that moved into a section (``AGENTRL_FORMAT_REWARD``),
    read into their section with a warning; the new names (``AGENTRL_MATH__FORMAT_REWARD``) win."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items()}
        old = {k: env[f"{ENV_PREFIX}{k.upper()}"] for k in DEPRECATED_KEYS
               if f"{ENV_PREFIX}{k.upper()}" in env}
        return migrate_deprecated(old, "environment variable") if old else {}


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``mcp.max_turns`` → ``AGENTRL_MCP__MAX_TURNS``."""
    return ENV_PREFIX + key.upper().replace(".", ENV_NESTED_DELIMITER)


def migrate_deprecated(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` with each deprecated flat key moved into its section, warning once per key.

    A value already given under the new key in the same ``values`` wins over the old one.

    Args:
        values: top-level keys and values of one source.
        where: what the source is, for the warning (``YAML key``, ``flag``...).

    Returns:
        A new mapping (``values`` is not changed).
    """
    out = dict(values)
    for old in [k for k in out if k in DEPRECATED_KEYS]:
        section, name = DEPRECATED_KEYS[old]
        value = out.pop(old)
        current = out.get(section)
        merged = dict(current) if isinstance(current, dict) else {}
        merged.setdefault(name, value)
        out[section] = merged
        warnings.warn(
            f"{where} {old!r} is deprecated: use {section}.{name} "
            f"(YAML `{section}: {{{name}: ...}}`, env {env_name(f'{section}.{name}')}, "
            f"flag --{section}.{name.replace('_', '-')})",
            FutureWarning,
            stacklevel=2,
        )
    return out


def known_keys() -> dict[str, str]:
    """Every settable key, dotted for section fields: ``{"mcp.max_turns": "mcp.max_turns"...}``,
    plus each section field's bare name mapped to its dotted key (for suggestions)."""
    keys: dict[str, str] = {}
    for name in AgentTrainingConfig.model_fields:
        section = SECTIONS.get(name)
        if section is None:
            keys[name] = name
            continue
        for field in section.model_fields:
            keys[f"{name}.{field}"] = f"{name}.{field}"
            keys.setdefault(field, f"{name}.{field}")
    return keys


def did_you_mean(key: str, candidates: dict[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the known key closest to ``key``, or ``""`` when none is close.

    Args:
        key: the unknown key as given.
        candidates: name to match → key to suggest (default: :func:`known_keys`).
    """
    candidates = known_keys() if candidates is None else candidates
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {candidates[match[0]]!r}?)" if match else ""


def _yaml_lines(text: str) -> dict[str, int]:
    """Map each key of a YAML mapping, and each key of a nested mapping as ``parent.key``, to its
    1-based line."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, value in node.value:
        lines[key.value] = key.start_mark.line + 1
        if isinstance(value, yaml.MappingNode):
            for sub, _ in value.value:
                lines[f"{key.value}.{sub.value}"] = sub.start_mark.line + 1
    return lines


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML config file.

    Returns:
        (values, lines): the top-level mapping and each key's 1-based line (nested keys dotted).

    Raises:
        ConfigError: the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("", str(path), f"cannot read config file: {exc}", file=str(path)) from exc
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError("", None, f"not valid YAML: {exc}", file=str(path), line=line) from exc
    if not isinstance(values, dict):
        raise ConfigError("", values, "the file must hold a mapping of keys", file=str(path))
    return values, _yaml_lines(text)


def _check_yaml_keys(values: dict[str, Any], lines: dict[str, int], path: str) -> None:
    """Refuse unknown top-level and section keys, suggesting the closest known one."""
    fields = AgentTrainingConfig.model_fields
    for key, value in values.items():
        if key not in fields and key not in DEPRECATED_KEYS:
            raise ConfigError(
                key, value,
                f"unknown key{did_you_mean(key)}; see `agentrl run --help` for the fields",
                file=path, line=lines.get(key),
            )
        section = SECTIONS.get(key)
        if section is None or not isinstance(value, dict):
            continue
        for sub, sub_value in value.items():
            if sub not in section.model_fields:
                names = {f: f"{key}.{f}" for f in section.model_fields}
                raise ConfigError(
                    f"{key}.{sub}", sub_value,
                    f"unknown key of section {key!r}{did_you_mean(sub, names)}",
                    file=path, line=lines.get(f"{key}.{sub}"),
                )


def _moved_lines(values: dict[str, Any], lines: dict[str, int]) -> dict[str, int]:
    """Lines of deprecated YAML keys under their new dotted names (for error messages)."""
    return {
        f"{section}.{name}": lines[old]
        for old, (section, name) in DEPRECATED_KEYS.items()
        if old in values and old in lines
    }


def load_config(path: str | Path | None = None, **overrides: Any) -> AgentTrainingConfig:
    """Load the configuration: defaults < YAML ``path`` < env ``AGENTRL_*`` < ``overrides``.

    Args:
        path: YAML file; ``None`` uses ``$AGENTRL_CONFIG`` when set, else no file.
        **overrides: field values that win over everything (CLI flags); a section is given as a
            mapping (``mcp={"max_turns": 8}``) and merged with the other sources' values.
            ``None`` values are ignored, so unset flags do not override.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: an unknown key, a wrong type or an out-of-range value, naming the key
            (dotted for section fields), the value, the reason, and the YAML file and line when
            the value came from the file.
    """
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        path = os.environ[CONFIG_ENV_VAR]
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        values, lines = read_yaml(path)
        _check_yaml_keys(values, lines, str(path))
        lines.update(_moved_lines(values, lines))
        values = migrate_deprecated(values, f"{path}: key")
    overrides = migrate_deprecated({k: v for k, v in overrides.items() if v is not None}, "flag")
    token = _yaml_values.set(values)
    try:
        return AgentTrainingConfig(**overrides)
    except ValidationError as exc:
        raise _config_error(exc, path, values, lines, overrides) from exc
    finally:
        _yaml_values.reset(token)


def _config_error(
    exc: ValidationError,
    path: str | Path | None,
    values: dict[str, Any],
    lines: dict[str, int],
    overrides: dict[str, Any],
) -> ConfigError:
    """The :class:`ConfigError` of a validation error, naming where the bad value came from."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc[:2])
    top = loc[0] if loc else ""

    def given(source: dict[str, Any]) -> bool:
        if len(loc) > 1 and isinstance(source.get(top), dict):
            return loc[1] in source[top]
        return top in source

    if given(overrides):
        source: dict[str, Any] = {"file": None}
    elif env_name(key) in os.environ or env_name(top) in os.environ:
        source = {"file": f"env {env_name(key) if env_name(key) in os.environ else env_name(top)}"}
    else:
        source = {"file": str(path) if given(values) else None,
                  "line": lines.get(key, lines.get(top))}
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = f"unknown key{did_you_mean(key)}; see `agentrl run --help` for the fields"
    return ConfigError(key, err.get("input"), message, **source)
