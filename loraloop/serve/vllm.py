"""`loraloop serve --engine vllm`: vLLM's own OpenAI server over the same routes, every routed
adapter checked (lm/vllm_lora.py) and passed as a LoRA module."""

from __future__ import annotations

import json
from pathlib import Path

from ..lm.vllm_lora import adapter_config, adapter_rank, max_lora_rank, problems
from .routes import Routes


class NotServable(RuntimeError):
    """What vLLM cannot serve, worded for the person who runs the server."""


# vLLM's --tool-call-parser for a base's model_type (config.json). Hermes' <tool_call>{json}</tool_call>
# is also how loraloop's fallback rendering writes calls for a template without tools.
TOOL_PARSERS = {
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "llama": "llama3_json",
    "mistral": "mistral",
    "granite": "granite",
    "internlm2": "internlm",
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def tool_parser(base_dir: Path) -> str:
    """The parser for the calls the served model writes: its family's, where its own template
    renders tools; else Hermes', the format loraloop's fallback rendering trained it on (a llama
    like SmolLM2 has no Llama 3 `<|python_tag|>`, and vLLM refuses llama3_json for it)."""
    if not template_renders_tools(base_dir):
        return "hermes"
    return TOOL_PARSERS.get(_json(Path(base_dir) / "config.json").get("model_type", ""), "hermes")


def template_renders_tools(base_dir: Path) -> bool:
    """Whether the base's own chat template shows the model its tools (what vLLM renders with)."""
    template = _json(Path(base_dir) / "tokenizer_config.json").get("chat_template") or ""
    jinja = Path(base_dir) / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return "tools" in json.dumps(template)


def vllm_command(routes: Routes, base_dir: Path, host: str, port: int, server: list[str] | None = None) -> list[str]:
    """vLLM's OpenAI server (the `vllm` command given) with every routed adapter: route ids serve the
    stable version (vLLM has no per-user canary split), <release>@<version> ids every version in
    service. `server`: how to start it, up to the model (vllm_engine.vllm_server); `vllm serve`."""
    modules: dict[str, Path] = {}
    for route, e in sorted(routes.current().items()):
        modules[route] = routes.adapter_dir(e["stable"]["adapter"])
        for side in ("stable", "canary"):
            if e.get(side):
                pin = f"{e['release']}@{e[side]['version']}"
                modules[pin] = routes.adapter_dir(e[side]["adapter"])
    if not modules:
        raise NotServable("models/routing.json routes nothing yet: run `dvc repro package` first")
    ranks = []
    for name, adapter in modules.items():
        cfg = adapter_config(adapter)
        bad = problems(cfg)
        if bad:
            raise NotServable(f"{name} ({adapter}): vLLM cannot serve it: {'; '.join(bad)}")
        ranks.append(adapter_rank(cfg))
    cmd = [*(server or ["vllm", "serve"]), str(base_dir), "--host", host, "--port", str(port), "--enable-lora"]
    # Tool calls parsed into tool_calls, tool_choice auto/required/named (vLLM's guided decoding).
    cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser(base_dir)]
    # Paths relative to the project, where the command runs.
    cmd += ["--lora-modules", *(f"{n}={p.relative_to(routes.root)}" for n, p in modules.items())]
    cmd += ["--max-lora-rank", str(max_lora_rank(ranks)), "--max-loras", str(len(set(modules.values())))]
    return cmd
