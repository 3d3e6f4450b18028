"""One typed, validated configuration: embedded defaults, a YAML file, CROSSREC_* env vars.

Precedence (highest first): explicit arguments (CLI flags, DAG trigger params, passed to
:func:`load_settings` as ``overrides``), environment (``CROSSREC_<KEY>``, nested keys
joined by ``__``), the YAML file given by ``--config`` or ``CROSSREC_CONFIG``, the
embedded ``defaults.yaml``. A wrong value, an unknown key in a file or an unknown
``CROSSREC_*`` variable fails at load time with :class:`ConfigError`, which names the
key or variable, the value and the allowed values.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from crossrec_core.errors import CrossrecError

ModelName = Literal["popularity", "item_knn_cross", "ease_cross", "target_only", "joint_mf", "emcdr", "dann", "mmd", "hybrid"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)

# Domain names become path segments (raw/domain=NAME/...): keep them to a safe alphabet so
# that no config value or trigger param can point outside the lake root.
DOMAIN_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

ENV_PREFIX = "CROSSREC_"
# CROSSREC_* variables that are not config keys: the config file, the images' install
# directory (docker/), the benchmark page (bench/). Any other unknown one is refused.
NON_SETTING_VARIABLES = frozenset({"CROSSREC_CONFIG", "CROSSREC_HOME", "CROSSREC_BENCH_DOCS"})


class ConfigError(CrossrecError):
    """A configuration value is missing or not allowed; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domains(_Section):
    source: str
    target: str

    @field_validator("source", "target")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not DOMAIN_NAME_PATTERN.match(name):
            raise ValueError(
                f"domain name {name!r} must match {DOMAIN_NAME_PATTERN.pattern} "
                "(lower-case letters, digits, underscore; it becomes a path segment)"
            )
        return name

    @model_validator(mode="after")
    def _distinct(self) -> Domains:
        if self.source == self.target:
            raise ValueError(f"source and target must differ, both are {self.source!r}")
        return self

    @property
    def all(self) -> tuple[str, str]:
        return (self.source, self.target)


class Validation(_Section):
    warm_fraction: float = Field(gt=0, lt=1, description="share of each warm user's latest target interactions held out")
    cold_start_fraction: float = Field(ge=0, lt=1, description="share of overlapping users whose target history is hidden")
    min_target_interactions: int = Field(ge=2, description="a warm user needs this many target interactions to give some to validation")


class DsRange(_Section):
    """The run dates (``--ds``, the DAG's ds) accepted; anything outside is a typo."""

    earliest: date
    latest: date

    @model_validator(mode="after")
    def _ordered(self) -> DsRange:
        if self.earliest > self.latest:
            raise ValueError(f"earliest {self.earliest} is after latest {self.latest}")
        return self


class SparkSettings(_Section):
    master: str = Field(description="master of in-process sessions; under Airflow the spark connection's master is passed in")
    shuffle_partitions: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        description="'auto': crossrec_core.spark.SHUFFLE_PARTITIONS_PER_CORE x the session's default parallelism (its cores)",
    )
    driver_memory: str = Field(pattern=r"^\d+[kmgt]$")
    driver_host: str | None = Field(description="spark.driver.host: the address executors reach the driver at; None: Spark's default")
    bind_address: str | None = Field(description="spark.driver.bindAddress: the driver's listening address; None: driver_host")
    conf: dict[str, str] = Field(default_factory=dict)


class ModelSettings(_Section):
    name: ModelName | Literal["auto"]
    candidates: list[ModelName] = Field(min_length=1, description="what model: auto fits and keeps the best of, on validation")
    dim: int = Field(ge=1, le=4096)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    seed: int
    patience: int = Field(ge=1)
    source_weight: float = Field(ge=0, description="lambda in L = L_target + lambda * L_source")
    history_length: int = Field(ge=1)
    negatives: int = Field(default=16, ge=1, description="sampled negatives per training interaction (sampled softmax)")
    cross_negatives: int = Field(
        ge=1, description="negatives shared by a batch in dann/mmd's cross-domain term (source history -> target items)"
    )
    knn_popularity_exponent: float = Field(ge=0)
    linear_l2: list[float] = Field(min_length=1, description="ease_cross: ridge penalties tried; the best on validation is kept")
    linear_keep: int = Field(ge=1, description="ease_cross: weights kept per target item (largest magnitude)")
    history_pooling: Literal["mean", "attention"] = Field(description="how dann/mmd/hybrid pool a history: weighted mean or attention")
    alignment_weight: float | None = Field(default=None, ge=0, description="dann/mmd/hybrid alignment term weight; null: the model's own")
    hybrid_paths: list[Literal["memory", "transfer"]] = Field(min_length=1, description="hybrid: score paths used (ablations)")
    memory_l2: float = Field(ge=0, description="hybrid: L2 penalty on the item-to-item weights of a batch")
    device: Literal["auto", "cpu", "cuda"]
    warm_start: bool = Field(description="start from the last published model's weights (False: retrain from scratch)")


class ScoreSettings(_Section):
    k: int = Field(ge=1, le=1000)
    block_size: int = Field(ge=1)
    backend: Literal["local", "spark"]
    min_history: int = Field(ge=1, description="fewer interactions than this: popularity fallback")


class GateSettings(_Section):
    tolerance: float = Field(ge=0, le=1, description="allowed relative drop of validation NDCG@10")


# The DAG's tasks that run a stage (the raw-data sensors have their own timeout, raw_wait_minutes).
TimedTask = Literal["clean", "featurize", "train", "evaluate", "gate", "score", "publish", "report"]


class OrchestrationSettings(_Section):
    """How Airflow runs the nightly DAG (dags/crossrec_nightly.py)."""

    schedule: str = Field(description="cron expression or preset such as @daily")
    start_date: date
    raw_wait_minutes: float = Field(gt=0, description="how long to wait for a domain's raw partition before failing")
    raw_poke_seconds: float = Field(gt=0)
    sensor_mode: Literal["poke", "reschedule"]
    retries: int = Field(ge=0, description="retries of transient failures; contract violations (exit 2) never retry")
    retry_delay_seconds: float = Field(ge=0, description="first retry delay; doubles on each retry")
    max_retry_delay_seconds: float = Field(ge=0)
    spark_conn_id: str = Field(min_length=1)
    torch_queue: str | None = Field(description="Airflow queue of the train and score tasks (a GPU worker); None: default queue")
    stage_timeout_minutes: dict[TimedTask, PositiveFloat] = Field(
        description="execution_timeout of each task; a task past it is killed (with its child processes) and retried"
    )
    dagrun_timeout_minutes: float = Field(gt=0, description="a whole night past this is failed, so it cannot block later nights")
    raw_success_marker: bool = Field(
        description="wait for raw/domain=D/ds=DS/_SUCCESS (the producer's 'delivery complete') instead of the first data file"
    )
    alerts_conn_id: str = Field(min_length=1, description="Airflow connection of the alert webhook; no such connection: no post")
    stale_after_hours: float = Field(gt=0, description="`crossrec status` exits 1 when a served list is older than this")

    @field_validator("stage_timeout_minutes")
    @classmethod
    def _every_task_timed(cls, timeouts: dict[str, float]) -> dict[str, float]:
        missing = sorted(set(get_args(TimedTask)) - set(timeouts))
        if missing:
            raise ValueError(f"no timeout for {missing}")
        return timeouts

    @model_validator(mode="after")
    def _night_outlasts_the_raw_wait(self) -> OrchestrationSettings:
        if self.dagrun_timeout_minutes <= self.raw_wait_minutes:
            raise ValueError(
                f"dagrun_timeout_minutes ({self.dagrun_timeout_minutes}) must exceed raw_wait_minutes ({self.raw_wait_minutes})"
            )
        return self


class QuerySettings(_Section):
    """Limits of ``crossrec sql`` (DuckDB)."""

    timeout_seconds: float = Field(gt=0, description="a query running longer is stopped")
    memory_limit: str = Field(pattern=r"(?i)^\d+(\.\d+)?\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)$", description="DuckDB memory_limit, e.g. 2GB")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    lake: Path
    domains: Domains
    event_weights: dict[str, PositiveFloat]
    default_event_type: str
    window_days: int = Field(ge=1)
    decay_half_life_days: float = Field(gt=0)
    validation: Validation
    kcore: int = Field(ge=0, description="0 disables k-core filtering")
    quarantine_threshold: float = Field(ge=0, le=1)
    max_id_length: int = Field(ge=1)
    earliest_valid_ts: datetime
    future_tolerance_hours: float = Field(ge=0)
    ds_range: DsRange
    fail_on_empty_delivery: bool = Field(
        description="clean fails when a raw partition's files hold no rows (else: a warning in the run report)"
    )
    spark: SparkSettings
    model: ModelSettings
    score: ScoreSettings
    gate: GateSettings
    orchestration: OrchestrationSettings
    query: QuerySettings

    @model_validator(mode="after")
    def _default_event_known(self) -> Settings:
        if self.default_event_type not in self.event_weights:
            raise ValueError(f"default_event_type {self.default_event_type!r} is not one of event_weights: {sorted(self.event_weights)}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges every source itself, in precedence order, into init kwargs.
        return (init_settings,)

    @property
    def source(self) -> str:
        return self.domains.source

    @property
    def target(self) -> str:
        return self.domains.target


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys at the top level")
    return data


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(root)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"config key '{key}': {message} (got {error.get('input')!r})"


def _unknown_key(model: type[BaseModel], path: list[str]) -> str | None:
    """Why ``path`` (lower-case key segments) names no config key, or None when it does."""
    for depth, key in enumerate(path):
        field = model.model_fields.get(key)
        if field is None:
            known = ", ".join(sorted(model.model_fields))
            return f"unknown config key {'.'.join(path[: depth + 1])!r} (keys there: {known})"
        if depth == len(path) - 1 or get_origin(field.annotation) is dict:
            return None  # a leaf, or any key of a mapping such as event_weights
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return f"config key {'.'.join(path[: depth + 1])!r} has no sub-keys"
        model = field.annotation
    return None


def _environment_values() -> dict[str, Any]:
    """The config values set by CROSSREC_* variables (pydantic-settings parses them);
    an unknown CROSSREC_* variable is refused, naming it, as an unknown YAML key is."""
    for name in sorted(os.environ):
        upper = name.upper()  # names are matched case-insensitively, as pydantic-settings does
        if upper.startswith(ENV_PREFIX) and upper not in NON_SETTING_VARIABLES:
            problem = _unknown_key(Settings, upper.removeprefix(ENV_PREFIX).lower().split("__"))
            if problem:
                raise ConfigError(
                    f"environment variable {name}: {problem}; nested keys are joined by '__' "
                    f"(e.g. CROSSREC_MODEL__NAME); other {ENV_PREFIX}* variables: {', '.join(sorted(NON_SETTING_VARIABLES))}"
                )
    try:
        return EnvSettingsSource(Settings)()
    except SettingsError as err:
        raise ConfigError(f"environment: {err}") from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load the configuration, validated. Sources, lowest first: embedded defaults, the
    YAML file, CROSSREC_* environment, then ``overrides`` (nested dicts: the explicit
    arguments of a CLI command or job)."""
    values = _read_yaml(resources.files("crossrec_core").joinpath("defaults.yaml").read_text(), "defaults.yaml")
    config_file = config_file or os.environ.get("CROSSREC_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = _deep_merge(values, _read_yaml(path.read_text(), str(path)))
    values = _deep_merge(values, _environment_values())
    values = _deep_merge(values, overrides)
    try:
        return Settings(**values)
    except ValidationError as err:
        raise ConfigError("invalid configuration: " + "; ".join(_describe(e) for e in err.errors())) from None
