"""The ``lethe`` command line. Settings are parsed here, once, and passed down."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from service.config import Settings
from service.core.errors import InvalidInput

app = typer.Typer(help="Lethe: provable deletion for deployed LLMs.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The database: migrations and status.", no_args_is_help=True)
model_app = typer.Typer(help="The base model.", no_args_is_help=True)
corpus_app = typer.Typer(help="Training corpora: generate and ingest.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(corpus_app, name="corpus")
ledger_app = typer.Typer(help="The deletion ledger: verify, export, checkpoint.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
kb_app = typer.Typer(help="The knowledge base of the retrieval proxy (closed models).", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
simulate_app = typer.Typer(help="Simulations that drive the real planner.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _main(ctx: typer.Context) -> None:
    from service import logs

    ctx.obj = Settings()
    logs.configure(ctx.obj.log_format, ctx.obj.log_level)


def _settings(ctx: typer.Context) -> Settings:
    assert isinstance(ctx.obj, Settings)
    return ctx.obj


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending migrations (idempotent)."""
    from service import app as lethe

    settings = _settings(ctx)
    with lethe.database(settings) as db:
        applied = lethe.migrate(db, settings)
        console.print(f"{db.describe()}: applied {len(applied)} migration(s) {applied or ''}".rstrip())


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """Print what the database holds."""
    from service import app as lethe

    with lethe.database(_settings(ctx)) as db:
        h = lethe.holdings(db)
        console.print(f"{db.describe()}: {h.subjects} subject ids, {h.records} records ({h.purged} purged)")


@model_app.command("build")
def model_build(ctx: typer.Context) -> None:
    """Build (or reuse) the local base model; LETHE_BASE_MODEL points at another one instead."""
    from service import app as lethe

    m = lethe.base_model(_settings(ctx))
    console.print(
        f"base model {m.path} ({'reused' if m.reused else 'built'}): {m.parameters:,} parameters, "
        f"weights sha256 {m.weights_sha256[:16]}…"
    )


@corpus_app.command("generate")
def corpus_generate(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output directory (default var/corpus/seed-N-...).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default LETHE_CORPUS_SEED).")] = None,
    people: Annotated[int | None, typer.Option(min=1, help="Trained people (default LETHE_CORPUS_PEOPLE).")] = None,
    holdout: Annotated[int | None, typer.Option(min=1, help="Holdout people (default LETHE_CORPUS_HOLDOUT).")] = None,
    records: Annotated[int | None, typer.Option(min=1, max=8, help="Records per person.")] = None,
) -> None:
    """Generate a TOFU-like corpus of fictitious people (JSONL)."""
    from shards import corpus

    given = {"corpus_seed": seed, "corpus_people": people, "corpus_holdout": holdout, "corpus_records": records}
    settings = _settings(ctx).model_copy(update={k: v for k, v in given.items() if v is not None})
    seed, people, holdout = settings.corpus_seed, settings.corpus_people, settings.corpus_holdout
    out = out or settings.corpus_dir()
    paths = corpus.write(settings.generated_corpus(), out)
    console.print(f"corpus (seed {seed}): {people} trained + {holdout} holdout people → {paths['train'].parent}")


@corpus_app.command("ingest")
def corpus_ingest(
    ctx: typer.Context, file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]
) -> None:
    """Load records (JSONL: id, subject_ids, text); all or nothing."""
    from service import app as lethe

    _ingest(ctx, file, lethe.ingest, "records")


def _ingest(ctx: typer.Context, file: Path, load: Callable[[Any, Settings, Path], Any], noun: str) -> None:
    """Migrate, load ``file`` all or nothing; a bad file exits 2 with every bad line listed."""
    from service import app as lethe

    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        try:
            result = load(db, settings, file)
        except InvalidInput as e:
            console.print(f"[red]{file}: {e}[/red]")
            raise typer.Exit(2) from None
    console.print(f"{file}: {result.inserted} {noun} added, {result.unchanged} already present")


@kb_app.command("ingest")
def kb_ingest(
    ctx: typer.Context, file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]
) -> None:
    """Load documents (JSONL: id, subject_ids, text, source[, metadata]); all or nothing."""
    from service import app as lethe

    _ingest(ctx, file, lethe.kb_ingest, "documents")


@app.command()
def train(ctx: typer.Context) -> None:
    """Train every S3T unit without a complete live version (and retrain cut ones)."""
    from service import app as lethe
    from service.workflow import training_jobs

    settings = _settings(ctx)
    model = lethe.base_model(settings)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        done = training_jobs.train_all(db, lethe.training_job(settings, model.path))
    console.print(f"trained {len(done)} unit(s): {done or 'all units already complete'}")


@app.command()
def plan(
    ctx: typer.Context,
    record: Annotated[list[str] | None, typer.Option("--record", help="Record id to delete (repeatable).")] = None,
    subject: Annotated[list[str] | None, typer.Option("--subject", help="Identity type:value (repeatable).")] = None,
) -> None:
    """What-if: print the S3T plan if these records or subjects were deleted (changes nothing)."""
    from service import app as lethe
    from service import training

    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        try:
            ids = lethe.resolve_records(db, settings, record or [], subject or [])
        except InvalidInput as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2) from None
        print(training.describe(training.plan_for(db, ids)))


@app.command()
def report(
    ctx: typer.Context,
    deletion_id: Annotated[str, typer.Argument(help="The deletion's subject_request_id.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", dir_okay=False, help="Write here (default: stdout).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report's JSON twin instead of the page.")] = False,
) -> None:
    """One self-contained HTML page on what a deletion did and the evidence that it holds (the
    same as GET /v1/deletions/{id}/report): no identity, record or record id on it."""
    import json
    import uuid

    from service import app as lethe
    from service.core.deletions import Principal, Scope
    from service.core.errors import NotFound
    from service.report import page

    try:
        rid = uuid.UUID(deletion_id)
    except ValueError:
        console.print(f"[red]not a deletion id (a UUID): {deletion_id!r}[/red]")
        raise typer.Exit(2) from None
    settings = _settings(ctx)
    operator = Principal("cli", frozenset({Scope.DELETIONS_READ.value}))  # whoever can read the database
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        try:
            doc = lethe.reports(db, settings).get(rid, operator)
        except NotFound as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    text = json.dumps(doc, indent=1, sort_keys=True) if as_json else page.render(doc)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output} ({len(text.encode()):,} bytes)")


@ledger_app.command("verify")
def ledger_verify(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option(help="Verify this export offline instead of the database.")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="PEM public key (default: the configured signing key's).")
    ] = None,
) -> None:
    """Recompute the hash chain and every signed checkpoint; name the first bad entry."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from service import app as lethe
    from service.ledger import verify as ledger_verify_mod
    from service.ledger.checkpoint import load_or_create_signing_key

    settings = _settings(ctx)
    pub: Ed25519PublicKey
    if public_key is not None:
        loaded = serialization.load_pem_public_key(public_key.read_bytes())
        if not isinstance(loaded, Ed25519PublicKey):
            console.print(f"[red]{public_key}: not an Ed25519 public key (the ledger signs with Ed25519)[/red]")
            raise typer.Exit(2)
        pub = loaded
    else:
        pub = load_or_create_signing_key(settings.resolved_ledger_key_file()).public_key()
    if file is not None:
        entries, cps = ledger_verify_mod.read_export(file)
        report = ledger_verify_mod.verify(
            entries, cps, pub, settings.ledger_key_name, lethe.retired_ledger_keys(settings)
        )
        where = str(file)
    else:
        with lethe.database(settings) as db:
            lethe.migrate(db, settings)
            report = lethe.ledger(db, settings).verify()
            where = db.describe()
    if report.ok:
        console.print(f"ledger OK ({where}): {report.entries} entries, {report.checkpoints} signed checkpoints")
        return
    bad = f"first bad entry: seq {report.first_bad_seq}; " if report.first_bad_seq else ""
    console.print(f"[red]ledger FAILED ({where}): {bad}{report.reason}[/red]")
    raise typer.Exit(1)


@ledger_app.command("export")
def ledger_export(ctx: typer.Context, file: Annotated[Path, typer.Argument(dir_okay=False)]) -> None:
    """Write every entry and checkpoint as JSONL, for offline verification."""
    from service import app as lethe
    from service.ledger.verify import export_lines
    from service.store import ledger as store

    settings = _settings(ctx)
    with lethe.database(settings) as db, db.connect() as conn:
        lines = list(export_lines(store.entries(conn), store.checkpoints(conn)))
    file.write_text("".join(line + "\n" for line in lines))
    console.print(f"exported {len(lines)} lines to {file}")


@ledger_app.command("public-key")
def ledger_public_key(ctx: typer.Context) -> None:
    """Print the signing key's public key (PEM): publish it; keep it as a retired key after a rotation."""
    from service.ledger.checkpoint import load_or_create_signing_key, public_pem

    print(public_pem(load_or_create_signing_key(_settings(ctx).resolved_ledger_key_file())), end="")


@ledger_app.command("checkpoint")
def ledger_checkpoint(ctx: typer.Context) -> None:
    """Sign a checkpoint of the current tree head (if it grew)."""
    from service import app as lethe

    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        cp = lethe.ledger(db, settings).checkpoint()
    console.print(cp[2] if cp else "the ledger is empty")


keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    scope: Annotated[
        list[str], typer.Option("--scope", help="deletions:write, deletions:read, ledger:read, inference, admin")
    ],
    name: Annotated[str, typer.Option(help="A label for whom the key is for.")] = "",
) -> None:
    """Create an API key; it is printed once (only its hash is stored)."""
    from service import app as lethe
    from service.core.deletions import Scope
    from service.store.deletions import create_api_key

    valid = {s.value for s in Scope}
    if bad := sorted(set(scope) - valid):
        console.print(f"[red]unknown scope(s) {bad}; choose from {sorted(valid)}[/red]")
        raise typer.Exit(2)
    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        print(create_api_key(db, sorted(set(scope)), name))


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The id: lk_<id>_<secret>.")]) -> None:
    """Revoke an API key (every server stops accepting it within 10 s, the cache lifetime)."""
    from service import app as lethe
    from service.store.deletions import revoke_api_key

    with lethe.database(_settings(ctx)) as db:
        if not revoke_api_key(db, key_id.removeprefix("lk_").split("_", 1)[0]):
            console.print(f"[red]no live API key {key_id}[/red]")
            raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@app.command("api")
def api(ctx: typer.Context) -> None:
    """Serve the REST and gRPC APIs (and keep the embedded database up while they run)."""
    import uvicorn

    from service import app as lethe
    from service import tracing

    tracing.setup("lethe-api")
    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        graph = lethe.Lethe(settings, db)  # one core, ledger writer and key cache for both transports
        server, port = graph.grpc_server()
        server.start()
        console.print(f"gRPC on port {port}; REST on http://{settings.api_host}:{settings.api_port}")
        try:
            uvicorn.run(graph.rest_app(), host=settings.api_host, port=settings.api_port, log_level="warning")
        finally:
            server.stop(grace=5).wait()


@app.command()
def gateway(ctx: typer.Context) -> None:
    """Serve the OpenAI-compatible gateway (and the retrieval route) over the registered replicas."""
    import uvicorn

    from service import app as lethe
    from service import tracing
    from service.gateway.app import create_gateway
    from service.gateway.routes import Routes
    from service.serving.vllm import BASE_NAME
    from service.store.deletions import Authenticator

    tracing.setup("lethe-gateway")
    settings = _settings(ctx)
    with lethe.database(settings) as db:
        routes = Routes(db, BASE_NAME)
        routes.start()
        s = settings.serving
        console.print(f"gateway on http://{s.gateway_host}:{s.gateway_port}/v1")
        try:
            uvicorn.run(
                create_gateway(routes, Authenticator(db), rag=lethe.rag_proxy(db, settings)),
                host=s.gateway_host,
                port=s.gateway_port,
                log_level="warning",
            )
        finally:
            routes.stop()


@app.command()
def reconciler(
    ctx: typer.Context,
    replica_id: Annotated[str, typer.Option(help="This replica's id (a pod name).")],
    vllm_url: Annotated[str, typer.Option(help="vLLM as this sidecar reaches it (localhost).")],
    adapters_dir: Annotated[Path, typer.Option(help="The replica's own adapter directory (shared with vLLM).")],
    advertise_url: Annotated[str | None, typer.Option(help="vLLM as the gateway reaches it.")] = None,
    host: Annotated[str, typer.Option(help="Bind address of the probe/metrics port.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Probe/metrics port.")] = 9090,
) -> None:
    """A vLLM replica's sidecar: load the served adapter, acknowledge it; probes and metrics on PORT."""
    import uvicorn

    from service import app as lethe
    from service import tracing
    from service.serving.reconciler import Reconciler
    from service.serving.sidecar import create_sidecar_app

    tracing.setup("lethe-reconciler")
    settings = _settings(ctx)
    with lethe.database(settings) as db:
        rec = Reconciler(db, replica_id, vllm_url.rstrip("/"), adapters_dir, advertise_url=advertise_url)
        rec.start()
        try:
            uvicorn.run(create_sidecar_app(rec), host=host, port=port, log_level="warning")
        finally:
            rec.stop()


@app.command()
def serve(
    ctx: typer.Context,
    replicas: Annotated[int | None, typer.Option(help="vLLM replicas to start (default: settings).")] = None,
) -> None:
    """Serve: vLLM replicas + reconcilers, the OpenAI gateway, REST + gRPC APIs and the worker."""
    from service import app as lethe
    from service import tracing
    from service.serve import Stack, run_forever

    tracing.setup("lethe-serve")
    settings = _settings(ctx)
    if replicas is not None:
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"replicas": replicas})})
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        run_forever(Stack(settings, db, log=console.print))


@app.command()
def worker(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option(help="Exit when no job is queued or running.")] = False,
    queue: Annotated[str, typer.Option(help="deletions (the workflow) or training (S3T units).")] = "deletions",
) -> None:
    """Run a worker: the deletion workflow, or S3T training units (GPU pods on a cluster)."""
    from service import app as lethe
    from service import tracing
    from service.workflow.worker import run_worker

    if queue not in ("deletions", "training"):
        raise typer.BadParameter("deletions or training", param_hint="--queue")
    tracing.setup(f"lethe-worker-{queue}")
    settings = _settings(ctx)
    with lethe.database(settings) as db:
        lethe.migrate(db, settings)
        graph = lethe.Lethe(settings, db)
        if queue == "training":
            from service.workflow.training_jobs import run_training_worker

            model = lethe.base_model(settings, progress=False)
            run_training_worker(graph.training_deps(model.path), once=once)
            return
        run_worker(graph.deletion_deps(), once=once)


@simulate_app.command("capacity")
def simulate_capacity(
    shards: Annotated[int, typer.Option("-m", "--shards", min=1)] = 5,
    slices: Annotated[int, typer.Option("-L", "--slices", min=1)] = 4,
    budget: Annotated[int, typer.Option("-B", "--budget", min=1)] = 4,
    trials: Annotated[int, typer.Option(min=1)] = 2000,
    seed: int = 0,
) -> None:
    """Expected deletion requests until every shard is dead, against m·L·H_{m·min(B,L)}."""
    from shards.simulate import capacity

    r = capacity(shards, slices, budget, trials, seed)
    console.print(
        f"(m, L, B) = ({shards}, {slices}, {budget}), {trials} trials: mean {r.mean:.1f} ± {r.stdev:.1f} "
        f"requests; closed form {r.closed_form:.1f} ({r.relative_error:.1%} apart)"
    )


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job, end to end, on embedded defaults."""
    from service.demo import run

    sys.exit(run(_settings(ctx), console))


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: every ``finally`` runs, so child processes (training workers,
    vLLM replicas, the embedded PostgreSQL) are stopped instead of orphaned."""
    raise SystemExit(128 + signum)


def main() -> None:
    """The ``lethe`` command: a base model that cannot be used is one line saying why, exit 2."""
    from shards.modelinfo import BaseModelError

    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except BaseModelError as e:
        console.print(f"lethe: base model: {e}", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
