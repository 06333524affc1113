"""params.yaml: its schema, and a loader that names the bad key and the expected type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .files import parse_yaml

PARAMS_FILE = Path("params.yaml")
# Round and lineage ids name DVC stages (train@tutor-r2) and directories: no '@', no path.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a directory name, never a path


class Section(BaseModel):
    # allow_inf_nan: a NaN bound passes every comparison and an infinite lr trains to NaN, so
    # every float in params.yaml must be finite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BaseParams(Section):
    source: Literal["embedded", "local", "hub"] = "embedded"
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "local" and not self.path:
            raise ValueError("base.source 'local' needs base.path (a directory)")
        if self.source == "hub" and not (self.hub_id and self.revision):
            raise ValueError("base.source 'hub' needs base.hub_id and a pinned base.revision")
        return self


class SourceParams(Section):
    path: str | None = None  # a file (.jsonl/.json/.parquet) or a datasets.save_to_disk dir
    hub: str | None = None  # anchor data from the hub by name: needs network, never a default
    hub_split: str = "train"
    kind: Literal["conversations", "feedback", "gold", "anchor"] = "conversations"
    # The records' shape (loraloop/data/formats.py); auto decides per record, from the fields it has.
    format: Literal["auto", "openai", "sharegpt", "alpaca", "preference", "hh", "lmsys", "magpie", "prosocial"] = "auto"
    # The file's container; auto goes by the suffix (.jsonl, .json array, .parquet, a directory).
    file_format: Literal["auto", "jsonl", "json", "parquet", "datasets"] = "auto"
    dataset_source: str | None = None  # default: the file's stem
    character_id: str | None = None  # default for records that carry none
    require_opt_in: bool = True  # consent required unless the source is public data you may use
    optional: bool = False  # a path that does not exist (yet) reads as no records, not an error

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("a source needs exactly one of path or hub")
        if self.hub is not None and self.kind != "anchor":
            raise ValueError("hub sources are only for kind: anchor")
        return self

    @property
    def name(self) -> str:
        return self.dataset_source or (Path(self.path).stem if self.path else self.hub)


class CollectParams(Section):
    sources: list[SourceParams] = Field(min_length=1)
    default_character_id: str | None = None
    max_message_chars: int = Field(32000, ge=1)
    # Deletion requests: files with one user id or record id per line (# comments allowed).
    # Matching records are removed from this and every later version.
    deletions: list[str] = Field(default_factory=list)


class RepetitionParams(Section):
    min_words: int = Field(50, ge=1)  # shorter texts are not judged
    dup_line_frac: float = Field(0.3, ge=0, le=1)
    top_2gram_frac: float = Field(0.2, ge=0, le=1)
    dup_5gram_frac: float = Field(0.15, ge=0, le=1)


class SpamParams(Section):
    max_links: int = Field(3, ge=0)
    max_link_density: float = Field(0.2, ge=0, le=1)  # links per word
    max_char_run: int = Field(10, ge=2)  # the same character this many times in a row


class ScrubParams(Section):
    min_user_chars: int = Field(2, ge=0)
    min_assistant_chars: int = Field(8, ge=0)
    names: list[str] = Field(default_factory=list)  # names/ids masked everywhere, beside each record's own
    names_file: str | None = None  # more of them, one per line
    # any, or an ISO 639-1 code: ko/ja/zh/ru by script; en, es, fr, de, ... by script and language ID
    language: str = Field("any", pattern=r"^(?:any|[a-z]{2})$")
    min_language_ratio: float = Field(0.5, ge=0, le=1)  # share of letters in the language's script
    phone_regions: list[str] = Field(["KR", "US"], min_length=1)  # national phone formats (ISO 3166 codes)

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v):
        import phonenumbers

        unknown = [r for r in v if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions {unknown}; use ISO 3166 codes such as KR, US, GB, JP")
        return v

    meta_filter: bool = True  # drop "as an AI language model" / "저는 AI" answers
    repetition: RepetitionParams = RepetitionParams()
    spam: SpamParams = SpamParams()
    near_dup_threshold: float | None = Field(0.8, gt=0, le=1)  # MinHash Jaccard; null disables
    review_sample: int = Field(20, ge=0)  # per character, for a human to read


class VersionParams(Section):
    eval_fraction: float = Field(0.15, gt=0, lt=1)
    # A character with little data still gets this many eval records (at most half of its
    # records): the hash split alone can leave a small character none.
    min_eval: int = Field(8, ge=0)


class SampleParams(Section):
    num_prompts: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    samples_per_prompt: int = Field(1, ge=1)  # >= 2 lets score pair best vs worst for DPO
    max_negatives: int = Field(32, ge=0)  # also answer the newest n negatives' prompts (paired against them)
    # hf: transformers generate (CPU or GPU). vllm: vLLM with its LoRA support (GPU, `pip install vllm`).
    engine: Literal["hf", "vllm"] = "hf"
    # Draft with the policy's multi-token heads (train.mtp_heads) and verify (lm/speculative.py):
    # on: wherever it has heads; auto: there, when prompts go one at a time (batch_size 1) on a GPU.
    speculative: Literal["auto", "on", "off"] = "auto"


class ScoreWeights(Section):
    """Weight of each rule in the total score; 0 keeps a rule informative only."""

    question_ratio: float = Field(1.0, ge=0)
    length: float = Field(0.5, ge=0)
    followup_question: float = Field(1.0, ge=0)
    balance: float = Field(0.0, ge=0)
    politeness: float = Field(0.0, ge=0)
    verbosity: float = Field(0.0, ge=0)
    meta_leakage: float = Field(0.0, ge=0)
    repetition: float = Field(0.0, ge=0)
    language: float = Field(0.0, ge=0)
    banned_words: float = Field(0.0, ge=0)
    tone: float = Field(0.0, ge=0)
    tool_call_valid: float = Field(0.0, ge=0)  # a tool call parses and names a declared tool


class RewardModelParams(Section):
    # none: rules only. learned: the lineage's judge (judge@<lineage>, models/judges/<lineage>),
    # trained on its users' labels. hf: a local transformers sequence-classification model
    # directory (safetensors) at `path`; a path without a kind means hf.
    kind: Literal["none", "learned", "hf"] = "none"
    path: str | None = None
    mode: Literal["add", "replace"] = "add"  # add: one more weighted rule; replace: the score is the reward
    weight: float = Field(1.0, ge=0)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _kind_and_path(self):
        if self.path and "kind" not in self.model_fields_set:
            self.kind = "hf"
        if self.kind == "hf" and not self.path:
            raise ValueError("kind hf needs path: a local sequence-classification model directory")
        if self.kind != "hf" and self.path:
            raise ValueError(f"path is the hf model's directory; kind {self.kind} reads none")
        return self


class RuleParams(Section):
    """What a reply is judged on: shared by score (training weights) and eval (metrics), so that
    both stages list this one key and eval_config hashes it once. A lineage overrides any of it."""

    weights: ScoreWeights = ScoreWeights()
    length_window: tuple[int, int] = (40, 400)
    balance_target: float = Field(0.5, ge=0, le=1)  # share of question sentences
    max_words_per_sentence: int = Field(25, ge=1)
    repetition_ngram: int = Field(3, ge=1)
    banned_words: list[str] = Field(default_factory=list)
    tone_keywords: dict[str, list[str]] = Field(default_factory=dict)  # character -> words its replies use
    # match: answer in the script the student wrote in; an ISO 639-1 code (ko, en, ...): always that language
    language: str = Field("match", pattern=r"^(?:match|[a-z]{2})$")

    @field_validator("length_window")
    @classmethod
    def _ordered(cls, v):
        if not 0 <= v[0] < v[1]:
            raise ValueError("length_window must be [low, high] with 0 <= low < high")
        return v


class ScoreParams(Section):
    rules: RuleParams = RuleParams()
    reward_model: RewardModelParams = RewardModelParams()
    weight_floor: float = Field(0.05, ge=0, le=1)
    keep_top_fraction: float = Field(0.5, gt=0, le=1)
    keep_top_k: int | None = Field(None, ge=1)  # also at most k samples per prompt
    pair_min_margin: float = Field(0.1, ge=0)  # best - worst score needed for a DPO pair


class JudgeParams(Section):
    """judge@<lineage>: a reward model learned from the lineage's labelled replies (feedback,
    corrections, preference pairs, thumbs down, filled-in A/B sheets) and a persona classifier of
    its characters' replies."""

    min_per_class: int = Field(20, ge=2)  # fewer labels of a class: no judge, score keeps the rules
    held_out: float = Field(0.25, gt=0, lt=1)  # share of conversations held out for the reported figures
    cv_folds: int = Field(5, ge=2)  # grouped by conversation, to choose the regularization
    C: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], min_length=1)  # tried by the CV
    max_length: int = Field(256, ge=16)  # tokens of context and reply the base reads per example
    batch_size: int = Field(16, ge=1)
    base_replies: int = Field(32, ge=0)  # the base's own replies, the persona classifier's "none"
    ab_dir: str = "data/raw/ab"  # filled-in A/B sheets: <ab_dir>/<lineage>/*.csv

    @field_validator("C")
    @classmethod
    def _positive(cls, v):
        if any(c <= 0 for c in v):
            raise ValueError("every C is a positive inverse regularization strength")
        return v

    @field_validator("ab_dir")
    @classmethod
    def _inside(cls, v):
        parts = Path(v).parts
        if Path(v).is_absolute() or ".." in parts:
            raise ValueError("a path inside the project, relative to it (no '..')")
        return v


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class CriticParams(Section):
    """The critic (train.token_weighting: critic): a value head on the frozen base's hidden states,
    fit to each scored sample's score at every reply token (the critic@<round> stage), whose change
    from token to token weighs that token in training."""

    hidden: int = Field(64, ge=1)  # the MLP's width
    epochs: int = Field(200, ge=1)  # full-batch Adam steps
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    positions: int = Field(16, ge=1)  # reply tokens per sample it is fit on (evenly spaced): memory bounded
    held_out: float = Field(0.25, gt=0, lt=1)  # share of prompts kept out for its R^2 and rank correlation
    min_samples: int = Field(8, ge=2)  # fewer scored samples: no critic, uniform weights
    temperature: float = Field(1.0, gt=0)  # softmax of the standardized value change per sequence
    mix: float = Field(0.5, ge=0, le=1)  # mixed with uniform weights (0: uniform, 1: the softmax alone)
    clip: float = Field(4.0, gt=1)  # no token weighs more than this (then the mean is put back to 1)
    batch_size: int = Field(8, ge=1)  # sequences per base forward


class TrainParams(Section):
    init: Literal["prev", "fresh"] = "prev"
    method: Literal["sft", "dpo"] = "sft"
    dpo_beta: float = Field(0.1, gt=0)
    # What DPO and Rho-1 measure against. base: the base, adapter switched off. start: the adapter
    # this round starts from (init: prev), a second frozen adapter on the same base.
    reference: Literal["base", "start"] = "base"
    # precompute: the reference's values once, before the loop; per_step: a reference forward in
    # every step (holds nothing in memory; the same adapter bytes).
    reference_logps: Literal["precompute", "per_step"] = "precompute"
    feedback_pairs: bool = True  # dpo: also the version's feedback pairs (bad vs corrected)
    # rho1: learn only the rho1_keep share of tokens with the highest loss above the reference.
    # rho1_soft: every token, weighted by a softmax of that excess loss within its sequence
    # (rho1_temperature), mixed with uniform weights (rho1_mix: 0 = uniform, 1 = softmax alone).
    # critic: every token weighted by the change in a value head's estimate of the reply's score
    # it brings (train.critic; the value head is the critic@<round> stage's).
    token_weighting: Literal["none", "rho1", "rho1_soft", "critic"] = "none"
    rho1_keep: float = Field(0.6, gt=0, le=1)
    rho1_temperature: float = Field(0.7, gt=0)
    rho1_mix: float = Field(0.3, ge=0, le=1)
    critic: CriticParams = CriticParams()
    quantize: Literal["none", "4bit"] = "none"  # 4bit: QLoRA through bitsandbytes (CUDA only)
    # Multi-token prediction (lm/mtp.py): H heads in all, the model's own next-token head and H-1
    # more, head k predicting the token k places ahead; 1 = off. Head k's loss weighs
    # mtp_weight * mtp_decay**(k-2). mtp_joint: the heads' losses also train the adapter (the WMTP
    # plan's objective); false: the heads learn on the adapter's hidden states without moving it
    # (Medusa-1: the adapter comes out bit for bit as without heads).
    mtp_heads: int = Field(1, ge=1, le=8)
    mtp_weight: float = Field(0.3, ge=0)
    mtp_decay: float = Field(0.8, gt=0, le=1)
    mtp_joint: bool = False
    # Steps of the heads alone after the adapter's, on the finished adapted model's hidden states
    # (train/heads.py: the loop's few steps leave new heads far from trained); 0: none.
    mtp_head_steps: int = Field(0, ge=0)
    # What those steps read: `replies`, each example's last assistant turn as the adapted model
    # itself writes it, greedy (self-distillation, Medusa-2: what verifying keeps is the model's own
    # next token, not the data's); `examples`, the examples' own tokens.
    mtp_head_data: Literal["replies", "examples"] = "replies"
    # More train-split prompts (cut as sample@rN cuts them) whose greedy replies those steps read
    # beside the examples' (replies only): a round's mix is small, and heads fit to more of the
    # model's replies draft more of it (README: Multi-token heads).
    mtp_head_prompts: int = Field(0, ge=0)
    steps: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # steps; 0: no checkpoints
    eval_examples: int = Field(16, ge=0)  # eval-split conversations for the eval loss
    # Where training runs: here (CPU or one GPU), or `accelerate launch` with a config file.
    launcher: Literal["local", "accelerate"] = "local"
    accelerate_config: str = "configs/accelerate/ddp.yaml"
    num_processes: int = Field(1, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(192, ge=16)
    mix_ratio: float = Field(0.5, gt=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    lora: LoraParams = LoraParams()

    @model_validator(mode="after")
    def _rho1_is_sft(self):
        if self.method == "dpo" and self.token_weighting != "none":
            raise ValueError(
                f"token_weighting: {self.token_weighting} weighs tokens of the SFT loss; with method: dpo, set none"
            )
        if self.method == "dpo" and self.mtp_heads > 1:
            raise ValueError("mtp_heads train on the SFT loss's targets; with method: dpo, set mtp_heads: 1")
        if self.mtp_head_prompts and self.mtp_head_data != "replies":
            raise ValueError(
                "mtp_head_prompts adds prompts whose replies the model writes; with mtp_head_data: "
                f"{self.mtp_head_data} there are none to read: set mtp_head_data: replies or mtp_head_prompts: 0"
            )
        if self.reference == "start" and self.init == "fresh":
            raise ValueError(
                "reference: start is the adapter the round starts from (init: prev); a fresh "
                "adapter starts as the base, so set reference: base"
            )
        return self


class Gate(Section):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self):
        if self.min is None and self.max is None:
            raise ValueError("a gate needs min, max or both")
        return self


class EvalParams(Section):
    num_prompts: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    ab_prompts: int = Field(30, ge=0)  # blinded A/B pairs vs the previous round for human labels
    leakage_prompts: int = Field(8, ge=1)  # per other lineage, for the tone_leakage_rate
    # Items (assistant turns) of the eval split's tool conversations, for the tool metrics
    # (judge/tool_eval.py); 0 turns them off.
    tool_prompts: int = Field(16, ge=0)
    # metric name -> bounds; a round passes when every gated metric is inside its bounds.
    gates: dict[str, Gate] = Field(default_factory=dict)


class PackageParams(Section):
    primary_metric: str = "mean_score"
    major: int = Field(0, ge=0)
    tag: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.]*$")  # tutor-v0.3-rc
    # The tag of a version whose round was judged on gold tool conversations (tutor-v0.3-tools),
    # when package.tag is not set; null: no tag.
    tools_tag: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.]*$")
    merge: bool = False  # also save base+adapter merged, for single-model serving
    # null: a new release serves every user at once (stable). A share in (0, 1): it goes to that
    # share of users as canary; `loraloop release promote NAME --share 1` makes it stable.
    canary_share: float | None = Field(None, gt=0, lt=1)
    # Release only adapters vLLM can serve (rank, no DoRA, no modules_to_save, no head/embedding LoRA).
    vllm_servable: bool = True


class MonitorParams(Section):
    """What `loraloop monitor` judges a served version on (loraloop/serve/monitor.py)."""

    min_requests: int = Field(20, ge=1)  # a version is judged once it has served this many
    # metric -> bounds (banned_word_rate, meta_leak_rate, repetition_rate, language_compliance,
    # latency_p95_ms, reply_chars_p95, thumbs_up_share, ...): outside them a version is unhealthy.
    alerts: dict[str, Gate] = Field(default_factory=dict)
    min_unique_ngrams: float = Field(0.5, ge=0, le=1)  # a reply below this share repeats itself: a problem


class RetrainParams(Section):
    min_new_examples: int = Field(50, ge=1)  # new opt-in examples since the release's data: retrain due


def merged(base: dict, override: dict) -> dict:
    """base with override's keys put in, mappings merged key by key (a list replaces a list)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class LineageParams(Section):
    """One adapter lineage: the characters it is trained on (the keys of system_prompts), and what
    it is judged on where that differs from score.rules and eval.gates."""

    system_prompts: dict[str, str] = Field(min_length=1)  # character id -> its system prompt
    # Any score.rules keys, merged over score.rules. Required (`rules: {}` for none): score@ stages
    # read this key alone, so editing a lineage's gates or prompts does not rescore its rounds.
    rules: dict
    gates: dict[str, Gate] = Field(default_factory=dict)  # beside eval.gates; the lineage's bound wins
    release: str | None = Field(None, pattern=RELEASE_NAME.pattern)  # models/release/<release>; default: the name


@dataclass(frozen=True)
class Lineage:
    """A lineage with its defaults filled in: what the stages of its rounds read."""

    name: str
    system_prompts: dict[str, str]
    rules: RuleParams
    gates: dict[str, Gate]
    release: str
    routes: dict[str, str]  # route id (what a client asks for) -> character

    @property
    def characters(self) -> list[str]:
        return sorted(self.system_prompts)


class StartSpec(Section):
    """The released version a round starts from (`loraloop round new --from release:V` writes it):
    prev is the round that version released, and its adapter must still hash as the release's."""

    release: str = Field(pattern=RELEASE_NAME.pattern)  # the version, e.g. tutor-v0.4
    adapter_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class RoundSpec(Section):
    lineage: str
    prev: str
    start: StartSpec | None = None
    # This round's own budget: any sample / train keys, over the sections' (a small character
    # trains fewer steps; a round at full size samples more), without touching other rounds.
    sample: dict = Field(default_factory=dict)
    train: dict = Field(default_factory=dict)


class Round(BaseModel):
    id: str
    prev: str
    lineage: str
    retired: bool = False
    packed: bool = False  # retired, its directories in retired/<lineage>/<round>/ (loraloop/history.py)


class RetiredSpec(RoundSpec):
    adapter_hash: str | None = None  # the adapter it had when it was retired
    # Its model, data and critic moved into retired/<lineage>/<round>/, one DVC output for the
    # lineage's packed rounds; unpacked, they stay at their stage paths (an active round starts from it).
    packed: bool = False


RETIRED = Path("retired")  # retired/<lineage>.dvc: a lineage's retired rounds (loraloop/history.py)
RETIRED_KEY = "loraloop_retired"  # where in a .dvc file's meta the retired rounds are listed


def read_retired(root: Path) -> dict[str, RetiredSpec]:
    """The retired rounds of every lineage, from retired/<lineage>.dvc under `root`, in the order
    they were retired (each lineage's oldest first)."""
    out: dict[str, RetiredSpec] = {}
    for path in sorted((Path(root) / RETIRED).glob("*.dvc")):
        try:
            doc = parse_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from None
        meta = doc.get("meta") if isinstance(doc, dict) else None
        listed = meta.get(RETIRED_KEY) if isinstance(meta, dict) else None
        if not isinstance(listed, dict):
            raise ParamsError(
                f"{path}: no meta.{RETIRED_KEY} mapping (round -> {{lineage, prev, adapter_hash}}): "
                "`loraloop round retire` writes these files; this one is not one of them"
            )
        for round_id, spec in listed.items():
            try:
                out[str(round_id)] = RetiredSpec.model_validate(spec)
            except ValidationError as exc:
                err = exc.errors()[0]
                err = {**err, "loc": ("meta", RETIRED_KEY, str(round_id), *err["loc"])}
                raise ParamsError(f"{path}: {_describe(err)}") from None
    return out


class Params(Section):
    seed: int = 1234
    base: BaseParams = BaseParams()
    collect: CollectParams
    scrub: ScrubParams = ScrubParams()
    version: VersionParams = VersionParams()
    # Adapter lineages: each trains on its own characters' data only and is released on its own.
    lineages: dict[str, LineageParams] = Field(min_length=1)
    sample: SampleParams = SampleParams()
    score: ScoreParams = ScoreParams()
    judge: JudgeParams = JudgeParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    package: PackageParams = PackageParams()
    monitor: MonitorParams = MonitorParams()
    retrain: RetrainParams = RetrainParams()
    # A mapping, not a list, so DVC's foreach names stages after the round: train@r2, not train@1.
    rounds: dict[str, RoundSpec] = Field(min_length=1)
    # Rounds retired from the DAG (retired/<lineage>.dvc, not params.yaml): still a prev, and history.
    _retired: dict[str, RetiredSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _lineages_and_rounds(self, info: ValidationInfo):
        self._retired = dict((info.context or {}).get("retired", {}))
        releases: dict[str, str] = {}
        for name, lp in self.lineages.items():
            if not NAME.match(name) or name == "base":
                raise ValueError(f"lineages.{name}: a lineage name is letters, digits, '_' and '-', and not 'base'")
            try:
                RuleParams.model_validate(merged(self.score.rules.model_dump(), lp.rules))
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"lineages.{name}.rules.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            release = lp.release or name
            if release in releases:
                raise ValueError(f"lineages.{name}.release: {release!r} is already the release of {releases[release]}")
            releases[release] = name
        seen = {round_id: spec.lineage for round_id, spec in self._retired.items()}  # round -> lineage
        for round_id, spec in self.rounds.items():
            if round_id in self._retired:
                raise ValueError(
                    f"rounds.{round_id}: {round_id} is retired ({RETIRED}/{self._retired[round_id].lineage}.dvc); "
                    "give the new round another id"
                )
            if not NAME.match(round_id) or round_id == "base":
                raise ValueError(
                    f"rounds.{round_id}: a round id is letters, digits, '_' and '-' (e.g. tutor-r1), not 'base'"
                )
            if spec.lineage not in self.lineages:
                raise ValueError(
                    f"rounds.{round_id}.lineage: {spec.lineage!r} is not under lineages ({list(self.lineages)})"
                )
            if spec.prev != "base" and seen.get(spec.prev) != spec.lineage:
                raise ValueError(
                    f"rounds.{round_id}.prev is {spec.prev!r}, which is neither 'base' nor an earlier (or "
                    f"retired) round of lineage {spec.lineage!r}"
                    + (
                        " (to start from a released version: `loraloop round new ID --from release:VERSION`)"
                        if spec.prev.startswith("release:")
                        else ""
                    )
                )
            seen[round_id] = spec.lineage
            for section, model in (("sample", SampleParams), ("train", TrainParams)):
                try:
                    model.model_validate(merged(getattr(self, section).model_dump(), getattr(spec, section)))
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(map(str, err["loc"]))
                    raise ValueError(
                        f"rounds.{round_id}.{section}{'.' + where if where else ''}: {err['msg']}"
                    ) from None
        return self

    def for_round(self, round_id: str) -> Params:
        """These params with the round's own sample and train keys over the sections'."""
        spec = self.rounds[round_id] if round_id in self.rounds else RoundSpec(lineage="", prev="base")
        if not spec.sample and not spec.train:
            return self
        return self.model_copy(
            update={
                "sample": SampleParams.model_validate(merged(self.sample.model_dump(), spec.sample)),
                "train": TrainParams.model_validate(merged(self.train.model_dump(), spec.train)),
            }
        )

    @property
    def round_list(self) -> list[Round]:
        """Rounds in the order params.yaml lists them."""
        return [self.round(round_id) for round_id in self.rounds]

    def round(self, round_id: str) -> Round:
        """A round of params.yaml, or a retired one."""
        if round_id in self._retired:
            spec = self._retired[round_id]
            return Round(id=round_id, prev=spec.prev, lineage=spec.lineage, retired=True, packed=spec.packed)
        if round_id not in self.rounds:
            raise ParamsError(
                f"round {round_id!r} is not listed under rounds in params.yaml (have {list(self.rounds)})"
            )
        spec = self.rounds[round_id]
        return Round(id=round_id, prev=spec.prev, lineage=spec.lineage)

    @property
    def retired(self) -> dict[str, RetiredSpec]:
        return self._retired

    def retired_of(self, lineage: str) -> list[str]:
        """The lineage's retired rounds, oldest first."""
        return [r for r, spec in self._retired.items() if spec.lineage == lineage]

    def history_of(self, lineage: str) -> list[str]:
        """The lineage's retired rounds, then those params.yaml declares."""
        return self.retired_of(lineage) + self.rounds_of(lineage)

    def lineage_of(self, round_id: str) -> Lineage:
        return self.lineage(self.round(round_id).lineage)

    def rounds_of(self, lineage: str) -> list[str]:
        return [round_id for round_id, spec in self.rounds.items() if spec.lineage == lineage]

    def lineage(self, name: str) -> Lineage:
        if name not in self.lineages:
            raise ParamsError(
                f"lineage {name!r} is not listed under lineages in params.yaml (have {list(self.lineages)})"
            )
        lp = self.lineages[name]
        return Lineage(
            name=name,
            system_prompts=dict(lp.system_prompts),
            rules=RuleParams.model_validate(merged(self.score.rules.model_dump(), lp.rules)),
            gates={**self.eval.gates, **lp.gates},
            release=lp.release or name,
            routes=self._routes(name),
        )

    def _routes(self, name: str) -> dict[str, str]:
        """The first lineage (in params.yaml's order) that covers a character serves it under the
        character's id; a later one (a variant: another prompt and rules on the same data) under
        <lineage>/<character>."""
        routes = {}
        for character in sorted(self.lineages[name].system_prompts):
            first = next(n for n, lp in self.lineages.items() if character in lp.system_prompts)
            routes[character if first == name else f"{name}/{character}"] = character
        return routes

    def score_of(self, lineage: str) -> ScoreParams:
        """score with the lineage's rules: its own weights, banned words, tone keywords, language."""
        return self.score.model_copy(update={"rules": self.lineage(lineage).rules})

    def lineage_of_release(self, release: str) -> Lineage:
        for name in self.lineages:
            if (self.lineages[name].release or name) == release:
                return self.lineage(name)
        raise ParamsError(
            f"no lineage releases as {release!r} (releases: {[self.lineage(n).release for n in self.lineages]})"
        )


class ParamsError(Exception):
    """A params.yaml problem, worded for the person who edits the file."""


class DataError(Exception):
    """Data a stage refuses (a record where it must not be), worded for the person who fixes it."""


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling against params.yaml's documented keys)"
    if err["type"] == "missing" and err["loc"][0] == "lineages" and err["loc"][-1] == "rules":
        return f"{loc}: required key is missing (write `rules: {{}}` to judge the lineage by score.rules alone)"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's wording for a check of ours
    if err["type"] == "value_error" and not err["loc"]:  # a check across sections: its message names the key
        return msg
    got = err.get("input")
    if err["type"] == "value_error" and isinstance(got, dict):  # a check across a section's keys names them
        return f"{loc}: {msg}"
    shown = f"{got!r} ({type(got).__name__})" if not isinstance(got, (dict, list)) else type(got).__name__
    return f"{loc}: {msg}; got {shown}"


MAX_VALUES = 100_000  # a params file that expands past this is an alias bomb, not configuration


def expands_beyond(value, limit: int) -> bool:
    """Whether the data, with every YAML alias expanded, holds more than `limit` values. PyYAML
    shares aliased nodes, so loading is cheap; validating or hashing them would expand them."""
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    if expands_beyond(raw, MAX_VALUES):
        raise ParamsError(
            f"{path}: expands to more than {MAX_VALUES:,} values; YAML aliases that nest (a 'billion laughs') "
            "are refused. Write the values out, or use fewer aliases."
        )
    try:
        return Params.model_validate(raw, context={"retired": read_retired(path.parent)})
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{path}: invalid parameters:\n  {lines}") from None
