"""`AgentTrainingConfig`: the one typed configuration of agentrl.

Values come, lowest precedence first, from the field defaults, a YAML file, environment variables
``AGENTRL_<FIELD>`` (upper case), and explicit overrides (CLI flags). Each field's description is
written once here and reused as the CLI's help text. A wrong value fails at load with
:class:`~agentrl.errors.ConfigError` naming the key, the value, the reason and, for YAML, the line.

Processes started by ``agentrl run`` (workers, beat) find the YAML file through the environment
variable ``AGENTRL_CONFIG``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agentrl.errors import ConfigError

CONFIG_ENV_VAR = "AGENTRL_CONFIG"
"""Environment variable naming the YAML file that :func:`load_config` reads by default."""

AGENTRL_HOME = Path(os.environ.get("AGENTRL_HOME", Path.home() / ".agentrl"))
"""Where embedded state lives by default (MongoDB data, objects, model cache)."""

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
        env_prefix="AGENTRL_", extra="forbid", validate_assignment=True, case_sensitive=False
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
        7200,
        ge=1,
        description="Redis broker visibility timeout in seconds (longer than any trajectory).",
    )
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Seconds a trajectory lease lives without a heartbeat."
    )
    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="Seconds between lease and service heartbeats."
    )

    # --- data ------------------------------------------------------------------------------------
    train_file: str = Field("", description="Training dataset file (JSONL or JSON).")
    eval_file: str = Field("", description="Evaluation dataset file (JSONL or JSON).")
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
        64, ge=1, description="Trajectories one sampling worker process runs at once."
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
    format_reward: float = Field(
        0.2, ge=0.0, le=1.0, description="Score of a well-formed but wrong answer (math)."
    )
    math_demonstration: bool = Field(
        True, description="Show the math sampler's one worked example before each question."
    )

    # --- osworld ---------------------------------------------------------------------------------
    osworld_env_urls: str = Field(
        "",
        description=(
            "Comma-separated URLs of running OSWorld env control servers "
            "(e.g. http://10.0.0.5:5000), one per env, registered by setup_osworld_envs."
        ),
    )
    osworld_provider: Literal["none", "docker", "vmware", "virtualbox", "aws", "azure"] = Field(
        "none",
        description="desktop-env provider starting OSWorld VMs on LOCAL_RANK 0 (none: URLs only).",
    )
    osworld_num_envs: int = Field(
        1, ge=0, description="OSWorld VMs the desktop-env provider starts per node."
    )
    osworld_os_type: str = Field("Ubuntu", description="OS of the OSWorld VMs (Ubuntu, Windows).")
    osworld_screen_width: int = Field(1920, ge=1, description="Screen width of an env (pixels).")
    osworld_screen_height: int = Field(1080, ge=1, description="Screen height of an env (pixels).")
    osworld_observation: Literal["a11y_tree", "screenshot", "screenshot_a11y_tree"] = Field(
        "a11y_tree",
        description="What the model sees per step: accessibility tree (text), screenshot, or both.",
    )
    osworld_max_steps: int = Field(15, ge=1, description="Actions per OSWorld episode at most.")
    osworld_a11y_max_chars: int = Field(
        6000, ge=100, description="Characters of the accessibility tree kept per observation."
    )
    osworld_on_malformed_action: Literal["continue", "end"] = Field(
        "continue",
        description="After an unparsable model output: record a failed step and go on, or end.",
    )
    osworld_env_lease_ttl_s: float = Field(
        60.0, gt=0, description="Seconds an env lease lives without a heartbeat."
    )
    osworld_env_wait_s: float = Field(
        600.0, gt=0, description="Seconds a trajectory waits for a free env before failing."
    )
    osworld_request_timeout_s: float = Field(
        120.0, gt=0, description="Seconds one HTTP call to an env control server may take."
    )
    osworld_notes_in_prompt: int = Field(
        3, ge=0, description="Notes of earlier trajectories of the task shown in the prompt."
    )

    # --- jobs (Celery, beat, leases) --------------------------------------------------------------
    beat_interval_s: float = Field(
        5.0, gt=0, description="Seconds between beat's push_epoch(split) checks."
    )
    housekeeping_interval_s: float = Field(
        10.0, gt=0, description="Seconds between re-enqueues of trajectories whose lease expired."
    )
    max_sample_attempts: int = Field(
        3, ge=1, description="Times a failing trajectory is started before it is scored 0."
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
        3, ge=1, description="Attempts per LLM call on transient errors (connection, 429, 5xx)."
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

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL: ``broker_url`` or, when empty, ``redis_url``."""
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        """The Celery result backend: ``result_backend`` or, when empty, ``redis_url``."""
        return self.result_backend or self.redis_url

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
        return (init_settings, env_settings, yaml_source)


def _yaml_lines(text: str) -> dict[str, int]:
    """Map each top-level key of a YAML mapping to its 1-based line."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value}


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML config file.

    Returns:
        (values, lines): the top-level mapping and each key's 1-based line.

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


def load_config(path: str | Path | None = None, **overrides: Any) -> AgentTrainingConfig:
    """Load the configuration: defaults < YAML ``path`` < env ``AGENTRL_*`` < ``overrides``.

    Args:
        path: YAML file; ``None`` uses ``$AGENTRL_CONFIG`` when set, else no file.
        **overrides: field values that win over everything (CLI flags). ``None`` values are
            ignored, so unset flags do not override.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: an unknown key, a wrong type or an out-of-range value, naming the key, the
            value, the reason, and the YAML file and line when the value came from the file.
    """
    if path is None and os.environ.get(CONFIG_ENV_VAR):
        path = os.environ[CONFIG_ENV_VAR]
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        values, lines = read_yaml(path)
        known = set(AgentTrainingConfig.model_fields)
        for key in values:
            if key not in known:
                raise ConfigError(
                    key, values[key], "unknown key (see `agentrl run --help` for the fields)",
                    file=str(path), line=lines.get(key),
                )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    token = _yaml_values.set(values)
    try:
        return AgentTrainingConfig(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        env_key = f"AGENTRL_{key.upper()}"
        if key in overrides:
            source: dict[str, Any] = {"file": None}
        elif env_key in os.environ:
            source = {"file": f"env {env_key}"}
        else:
            source = {"file": str(path) if key in values else None, "line": lines.get(key)}
        raise ConfigError(key, err.get("input"), err["msg"], **source) from exc
    finally:
        _yaml_values.reset(token)
