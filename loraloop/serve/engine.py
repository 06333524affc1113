"""The model side of `loraloop serve`: one base model in memory with every served adapter loaded on
it (PEFT multi-adapter), and one worker thread that runs queued requests in batches. Requests that
arrive within `batch_wait` seconds of each other and want the same adapter and decoding are
generated together (loraloop/lm/generate.py's batched sampler); tokens go back to each request as they
are made, so a client can stream them."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..lm.cpu_matmul import cpu_linears
from ..lm.forced_call import forced_call
from ..lm.generate import generate, stop_ids
from ..lm.kv_cache import ragged
from ..lm.model import load_base, load_tokenizer


@dataclass
class Job:
    prompt: list[int]  # token ids, chat template applied
    adapter: Path  # the adapter directory this request is served by
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    on_token: Callable[[int], None]  # called from the worker thread with each new token
    on_done: Callable[[BaseException | None], None]  # called once, from the worker thread
    # (tools, name or None): the reply must be a call (tool_choice required or named), decoded
    # under the tools' schemas (lm/forced_call.py), one request at a time.
    forced: tuple[list, str | None] | None = None
    stops: list[str] = field(default_factory=list)  # the request's stop sequences
    tokens: list[int] = field(default_factory=list)
    # Set by the server when the client left, or here when a stop sequence appeared: the job's row
    # ends at the next decode step and frees its place in the batch.
    halted: bool = False
    done: bool = False  # on_done was called (a halted job's, at once: not when its batch ends)
    speculative: dict | None = None  # drafted with the adapter's heads: acceptance, tokens per forward

    @property
    def key(self) -> tuple:
        return (str(self.adapter), self.max_tokens, self.temperature, self.top_p)


class Engine:
    def __init__(self, base_dir: Path, batch_size: int = 16, batch_wait: float = 0.01, speculative: str = "auto"):
        # Draft with a release's multi-token heads (lm/speculative.py), a batch's rows each keeping
        # its own drafts: on: wherever the adapter has heads; auto: there, on a GPU (on a CPU
        # drafting did not pay in batches, README: Multi-token heads); off: never.
        self.speculative = speculative == "on" or (speculative == "auto" and torch.cuda.is_available())
        self.heads: dict[str, object] = {}  # adapter directory -> its heads, or None
        self.drafted = 0  # requests answered with drafting
        self.tok = load_tokenizer(base_dir)
        self.base = load_base(base_dir)
        self.model = None  # the PeftModel, once the first adapter is loaded
        self.adapters: dict[str, str] = {}  # adapter directory -> PEFT adapter name
        self.stop = stop_ids(self.base, self.tok)
        self.context = getattr(self.base.config, "max_position_embeddings", None)
        self.batch_size, self.batch_wait = batch_size, batch_wait
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.batches = 0  # generate() calls made; with `batched` requests, how well batching works
        self.batched = 0
        self.worker = threading.Thread(target=self._work, name="loraloop-engine", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=30)

    def _adapter_name(self, adapter: Path) -> str:
        """The PEFT name of an adapter directory, loading it on first use. Names are a0, a1, ...:
        PEFT keys modules by adapter name, and a version id's dots are not allowed there."""
        key = str(adapter)
        if key not in self.adapters:
            from peft import PeftModel

            name = f"a{len(self.adapters)}"
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, adapter, adapter_name=name)
            else:
                self.model.load_adapter(adapter, adapter_name=name)
            self.model.eval()
            self.adapters[key] = name
        return self.adapters[key]

    def _take(self) -> list[Job] | None:
        """The next job and whatever arrives within batch_wait of it; None: shut down."""
        first = self.jobs.get()
        if first is None:
            return None
        jobs, deadline = [first], time.monotonic() + self.batch_wait
        while len(jobs) < 4 * self.batch_size:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # shut down after this batch
                break
            jobs.append(job)
        return jobs

    def _work(self) -> None:
        # The base's weights packed for decode once for the server's life, not per batch (see
        # cpu_linears); the adapters loaded later wrap these same layers.
        with cpu_linears(self.base):
            while (jobs := self._take()) is not None:
                groups: dict[tuple, list[Job]] = {}
                for job in jobs:
                    if job.forced is not None:
                        self._run([job])
                        continue
                    groups.setdefault(job.key, []).append(job)
                for group in groups.values():
                    for start in range(0, len(group), self.batch_size):
                        self._run(group[start : start + self.batch_size])

    def _run(self, group: list[Job]) -> None:
        try:
            name = self._adapter_name(group[0].adapter)
            self.model.set_adapter(name)

            def heard(i: int, token: int) -> None:
                job = group[i]
                job.tokens.append(token)
                job.on_token(token)
                if job.stops and not job.halted:
                    job.halted = stop_in_tail(self.tok, job.tokens, job.stops)

            first = group[0]
            if first.forced is not None:
                tools, tool = first.forced
                forced_call(
                    self.model,
                    self.tok,
                    first.prompt,
                    tools,
                    tool,
                    first.max_tokens,
                    first.temperature,
                    first.seed,
                    on_token=lambda t: heard(0, t),
                    halt=lambda: ended_early(first),
                )
            elif self._heads(first.adapter) is not None:
                self._draft(group, heard)
            else:
                with torch.inference_mode():
                    generate(
                        self.model,
                        self.tok,
                        [j.prompt for j in group],
                        batch_size=len(group),
                        max_new_tokens=first.max_tokens,
                        temperature=first.temperature,
                        top_p=first.top_p,
                        seed=0,
                        seeds=[j.seed for j in group],
                        desc="",
                        progress=False,
                        on_token=heard,
                        halt=lambda i: ended_early(group[i]),
                    )
            self.batches += 1
            self.batched += len(group)
        except BaseException as exc:  # a failed batch fails its requests, not the server
            for job in group:
                if not job.done:
                    job.on_done(exc)
            return
        for job in group:
            if not job.done:
                job.on_done(None)

    def _heads(self, adapter: Path):
        """The adapter's multi-token heads when this engine drafts with them, else None."""
        if not self.speculative:
            return None
        key = str(adapter)
        if key not in self.heads:
            from ..lm import mtp

            path = Path(adapter) / mtp.HEADS_FILE
            out = self.base.get_output_embeddings().weight  # the heads run where and as the model does
            self.heads[key] = mtp.load(path).to(out.device, out.dtype) if path.is_file() else None
        return self.heads[key]

    def _draft(self, group: list[Job], heard: Callable[[int, int], None]) -> None:
        """The group's requests, their heads drafting and the adapted model verifying, one alone or
        several rows of a batch, each keeping its own drafts (same greedy text; sampled text from
        the same distribution, lm/speculative.py)."""
        from ..lm.spec_stats import SpecStats
        from ..lm.speculative import Decoding, decode_batch, decode_one

        heads, first = self._heads(group[0].adapter), group[0]
        hows = [Decoding.seeded(j.temperature, j.top_p, j.seed) for j in group]
        stats = [SpecStats.for_heads(len(heads)) for _ in group]
        with ragged(self.model):  # grouped-query attention without repeating the cache (lm/kv_cache.py)
            if len(group) == 1:
                on_token, halt = (lambda t: heard(0, t)), (lambda: ended_early(first))
                decode_one(
                    self.model, heads, first.prompt, first.max_tokens, self.stop, stats[0], hows[0], on_token, halt
                )
            else:
                prompts, halt = [j.prompt for j in group], (lambda i: ended_early(group[i]))
                decode_batch(self.model, heads, prompts, first.max_tokens, self.stop, stats, hows, heard, halt)
        for job, st in zip(group, stats):
            job.speculative = st.summary()
        self.drafted += len(group)


def stop_in_tail(tok, tokens: list[int], stops: list[str]) -> bool:
    """Whether a stop sequence ends within the last tokens (decoding only as many tokens as the
    longest sequence has characters, and a few more: a token is at least one character)."""
    tail = tok.decode(tokens[-(max(map(len, stops)) + 4) :], skip_special_tokens=True)
    return any(s in tail for s in stops)


def ended_early(job: Job) -> bool:
    """Whether a job is halted; the first time, it is done for its client at once (its reply is
    whole, or nobody waits), not when the rest of its batch ends."""
    if job.halted and not job.done:
        job.done = True
        job.on_done(None)
    return job.halted
