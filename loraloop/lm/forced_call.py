"""A tool call the model must make (OpenAI's tool_choice "required" or a named function), decoded
under the tools' JSON schemas: the call's frame (`<tool_call>`, the keys, the braces) is the
rendering training used, the tool is the declared name the model ranks highest (or the one named),
and every value is the model's own tokens, restricted to what the schema allows there (a string
without quotes or escapes, digits for a number, true/false, one of an enum). So the reply is a
valid call of a declared tool with schema-valid arguments, or, when the budget runs out first, a
broken one that the server returns as text.

Restricting works on text: the candidate tokens are tried in the order of the (temperature-scaled,
Gumbel-perturbed when sampling, so the choice is a sample of the restricted distribution) logits,
and the first whose text keeps the call valid is taken."""

from __future__ import annotations

import json
import re
import weakref

import torch

from .tool_calls import CLOSE, OPEN, parse, tool_specs

SCAN = 4096  # candidate tokens tried per step before the step gives up
STRING_TOKENS = 32  # a string value is closed after this many tokens
NUMBER_TOKENS = 12
NUMBER_PREFIX = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?\Z")
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\Z")


_VOCAB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (texts, closers)


def vocab_texts(tok) -> list[str]:
    """Each token id's text on its own ("" for a piece of a character), once per tokenizer."""
    if tok not in _VOCAB:
        texts = [tok.decode([t], skip_special_tokens=False) for t in range(len(tok))]
        texts = ["" if "\ufffd" in s else s for s in texts]
        _VOCAB[tok] = (texts, [t for t, s in enumerate(texts) if s[:1] in (",", "}", "]", " ", "\n")])
    return _VOCAB[tok][0]


def closers(tok) -> list[int]:
    """The tokens that end a number: what follows one in JSON."""
    vocab_texts(tok)
    return _VOCAB[tok][1]


class OutOfBudget(Exception):
    """The token budget ran out, or no token could continue the call."""


class Halted(Exception):
    """halt() said stop: the call is wanted no more."""


class CallDecoder:
    """One forced call on `model` after `prompt` (token ids), every new token reported to on_token.
    Each piece (a string, a number, a choice) decodes its own tokens, so a character that takes
    several byte tokens is judged once it is whole."""

    def __init__(self, model, tok, prompt: list[int], budget: int, temperature: float, seed: int, halt=None):
        self.model, self.tok, self.budget, self.temperature = model, tok, budget, temperature
        self.halt = halt or (lambda: False)
        self.gen = torch.Generator().manual_seed(seed)
        self.special = set(tok.all_special_ids)
        self.ids: list[int] = []  # the call's tokens so far
        self.cache = None
        self.logits = self._forward(prompt)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=dev), past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].float().cpu()

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def _take(self, new: list[int]) -> None:
        if len(self.ids) + len(new) > self.budget:
            raise OutOfBudget
        if self.halt():  # nobody waits for the call any more: no further forward pass
            raise Halted
        self.ids += new
        self.logits = self._forward(new)

    def emit(self, text: str) -> None:
        """Frame text the model does not choose."""
        self._take(self.tok(text, add_special_tokens=False)["input_ids"])

    def _ranked(self) -> list[int]:
        """Token ids best first: by logit when greedy; by Gumbel-perturbed scaled logit when
        sampling (the first allowed one is then a sample of the allowed tokens' distribution)."""
        scores = self.logits.clone()
        if self.temperature > 0:
            u = torch.rand(scores.shape, generator=self.gen).clamp_(1e-12, 1 - 1e-12)
            scores = scores / self.temperature - torch.log(-torch.log(u))
        return scores.topk(min(SCAN, scores.numel())).indices.tolist()

    def step(self, seg: list[int], ok) -> bool | str:
        """The best-ranked token after which `ok(the piece's text)` holds: True (take it, go on)
        or "end" (take it, the piece is done)."""
        for t in self._ranked():
            if t in self.special:
                continue
            verdict = ok(self.decode(seg + [t]))
            if verdict:
                self._take([t])
                seg.append(t)
                return verdict
        raise OutOfBudget

    def best(self, ids: list[int]) -> int:
        """The best-ranked of these token ids (greedy, or a sample of their distribution)."""
        scores = self.logits[ids]
        if self.temperature > 0:
            u = torch.rand(scores.shape, generator=self.gen).clamp_(1e-12, 1 - 1e-12)
            scores = scores / self.temperature - torch.log(-torch.log(u))
        return ids[int(scores.argmax())]

    def choose(self, options: list[str]) -> str:
        """One of the options (none a prefix of another), spelled by the model's tokens: at each
        step the best token whose text keeps what is spelled a prefix of an option."""
        texts, done = vocab_texts(self.tok), ""
        while done not in options:
            ids = [
                t
                for t, s in enumerate(texts)
                if s and t not in self.special and any(o.startswith(done + s) for o in options)
            ]
            if not ids:
                raise OutOfBudget
            t = self.best(ids)
            self._take([t])
            done += texts[t]
        return done

    def string(self) -> None:
        """A JSON string: the model's characters (no quote, backslash or control character, at
        least one) up to the closing quote, which it writes too."""
        self.emit('"')
        seg: list[int] = []

        def ok(s: str) -> bool | str:
            body = s.replace("\ufffd", "")
            if "\\" in body or any(ord(c) < 32 for c in body):
                return False
            if '"' in body:
                return "end" if body.index('"') == len(body) - 1 and len(body) > 1 else False
            return True

        for _ in range(STRING_TOKENS):
            if self.step(seg, ok) == "end":
                return
        self.emit('"')  # a value this long is closed here, so the call stays valid

    def number(self, schema: dict) -> None:
        """Digits (a sign, a decimal point for a number) until the model would rather close the
        value, kept inside the schema's minimum and maximum."""
        texts, done = vocab_texts(self.tok), ""
        integer = schema.get("type") == "integer"
        low, high = schema.get("minimum"), schema.get("maximum")

        def can_grow(p: str) -> bool:  # digits only move a number away from zero
            if not NUMBER_PREFIX.match(p) or (integer and "." in p) or p in ("", "-"):
                return p == "-" and (low is None or low < 0)
            v = float(p.rstrip("."))
            return not ((high is not None and v > high and v >= 0) or (low is not None and v < low and v <= 0))

        def inside(p: str) -> bool:
            v = float(p)
            return (low is None or v >= low) and (high is None or v <= high)

        for _ in range(NUMBER_TOKENS):
            go_on = [t for t, s in enumerate(texts) if s and t not in self.special and can_grow(done + s)]
            stop = closers(self.tok) if NUMBER.match(done) and inside(done) else []
            if not go_on and not stop:
                raise OutOfBudget
            t = self.best(go_on + stop)
            if t not in go_on:  # the model would close the number here
                return
            self._take([t])
            done += texts[t]
        if not NUMBER.match(done):
            raise OutOfBudget

    def value(self, schema: dict) -> None:
        """A value that satisfies `schema` (the JSON schema a tool's parameters use: type, enum,
        const, properties/required, items, and anyOf/oneOf by their first option)."""
        if "const" in schema:
            self.emit(json.dumps(schema["const"], ensure_ascii=False))
            return
        if "enum" in schema:
            self.choose([json.dumps(v, ensure_ascii=False) for v in schema["enum"]])
            return
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                self.value(schema[key][0])
                return
        kind = schema.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "string":
            self.string()
        elif kind in ("number", "integer"):
            self.number({**schema, "type": kind})
        elif kind == "boolean":
            self.choose(["true", "false"])
        elif kind == "null":
            self.emit("null")
        elif kind == "array":
            self.array(schema)
        else:
            self.object(schema)

    def array(self, schema: dict) -> None:
        """At least one item (minItems if more), then the model's choice of another or the end."""
        items = schema.get("items") or {"type": "string"}
        least = max(1, int(schema.get("minItems", 1)))
        most = max(least, int(schema.get("maxItems", 8)))
        self.emit("[")
        for n in range(1, most + 1):
            self.value(items)
            if n < least:
                self.emit(", ")
            elif n == most or self.choose([", ", "]"]) == "]":
                break
        if n == most:
            self.emit("]")

    def object(self, schema: dict) -> None:
        """Required properties in schema order; then the optional ones the model chooses to add."""
        props = schema.get("properties") or {}
        optional = [k for k in props if k not in (schema.get("required") or [])]
        self.emit("{")
        first = True
        for key in [k for k in schema.get("required") or [] if k in props]:
            self.emit(("" if first else ", ") + json.dumps(key, ensure_ascii=False) + ": ")
            self.value(props[key])
            first = False
        while optional:
            keys = {("" if first else ", ") + json.dumps(k, ensure_ascii=False) + ": ": k for k in optional}
            picked = self.choose([*keys, "}"])
            if picked == "}":
                return
            self.value(props[keys[picked]])
            optional.remove(keys[picked])
            first = False
        self.emit("}")


def forced_call(
    model,
    tok,
    prompt: list[int],
    tools: list,
    name: str | None,
    budget: int,
    temperature: float,
    seed: int,
    on_token=None,
    tries: int = 3,
    halt=None,
) -> list[int]:
    """The token ids of one call (the named tool, or the declared tool the model picks), under
    `budget` tokens. What the decoder does not restrict (a pattern, a length bound, a number
    bound it could not keep) is checked against the schema afterwards, and a call that fails is
    decoded again, sampling (temperature at least 1), up to `tries` times; the last try stands
    either way, so a call that never validates goes back as text. on_token hears the final ids.
    `halt()` true (its client left) stops the decoding before its next forward pass; the ids so far
    are then the result."""
    specs = tool_specs(tools)
    for attempt in range(tries):
        warm = temperature if attempt == 0 else max(temperature, 1.0)
        d = CallDecoder(model, tok, prompt, budget, warm, seed + attempt, halt)
        try:
            d.emit(OPEN + '\n{"name": ')
            chosen = name
            if name:
                d.emit(json.dumps(name, ensure_ascii=False))
            else:
                quoted = {json.dumps(n, ensure_ascii=False): n for n in specs}
                chosen = quoted[d.choose(list(quoted))]
            d.emit(', "arguments": ')
            d.object(specs[chosen].get("parameters") or {"type": "object"})
            d.emit("}\n" + CLOSE)
        except (OutOfBudget, Halted):
            break  # a longer try would not fit either, or nobody waits for one
        if not parse(d.decode(d.ids), tools).problems:
            break
    for t in d.ids:
        (on_token or (lambda t: None))(t)
    return d.ids
