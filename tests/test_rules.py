import pytest
from conftest import write_lines

from loraloop.files import read_jsonl
from loraloop.judge import rules, score
from loraloop.params import RuleParams, ScoreParams


def test_question_ratio_and_followup():
    assert rules.question_ratio("What is 3 times 4? Try it. Then what?") == 2 / 3
    assert rules.followup_question("Try it. Then what?") == 1.0
    assert rules.followup_question("What is it? Try it.") == 0.0
    assert rules.question_ratio("") == 0.0
    assert rules.question_ratio("그 다음은 무엇일까요?") == 1.0


def test_length_window():
    assert rules.length_score("x" * 50, (40, 400)) == 1.0
    assert rules.length_score("x" * 20, (40, 400)) == 0.5
    assert rules.length_score("x" * 600, (40, 400)) == 0.5
    assert rules.length_score("x" * 900, (40, 400)) == 0.0


def test_socratic_beats_lecture():
    p = RuleParams()
    _, socratic = rules.score_text("Good start. What do both denominators need to share before you add?", p)
    _, lecture = rules.score_text("The answer is 7/12. Memorize the method and apply it to every problem.", p)
    assert socratic == pytest.approx(0.8) and lecture == pytest.approx(0.2)  # (0.5+0.5+1)/2.5, (0+0.5+0)/2.5


def test_score_stage_weights_and_keep(tmp_path):
    rows = [
        {"prompt_id": f"p{i}", "response": text}
        for i, text in enumerate(
            [
                "The answer is 4.",
                "What is 2 plus 2? Count it out loud, what do you get?",
                "Hmm.",
                "What do you think comes next?",
            ]
        )
    ]
    src = write_lines(tmp_path / "samples.jsonl", rows)
    for r in rows:
        r["messages"] = [{"role": "user", "content": "what is 2 plus 2"}]
    src = write_lines(tmp_path / "samples.jsonl", rows)
    stats = score.run(
        ScoreParams(keep_top_fraction=0.5, weight_floor=0.1), src, tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl"
    )
    out = list(read_jsonl(tmp_path / "scored.jsonl"))
    assert stats["kept"] == 2 and stats["pairs"] == 0  # one sample per prompt: nothing to pair
    assert [r["keep"] for r in out] == [False, True, False, True]
    assert all(r["weight"] >= 0.1 for r in out)
    # Every rule is written per sample, weighted or not (tone: no keywords for this character).
    assert set(out[1]["scores"]) == set(rules.RULES) - {"tone", "tool_call_valid"}  # (no keywords, no call)


def test_each_rule_tells_good_from_bad():
    assert rules.balance("Add the tops. What do you get?", 0.5) == 1.0
    assert rules.balance("What? Why? How?", 0.5) == 0.0
    assert rules.politeness("Good question! What comes next?") == 1.0
    assert rules.politeness("That is stupid.") == 0.0
    assert rules.politeness("Next step.") == 0.5
    assert rules.politeness("좋아요, 같이 해 봐요.") == 1.0
    assert rules.verbosity("Short one. Another short one.", 25) == 1.0
    assert rules.verbosity(" ".join(["word"] * 50) + ".", 25) == 0.0
    assert rules.meta_leakage("As an AI language model, I cannot.") == 0.0
    assert rules.meta_leakage("user: hi\nassistant: hello") == 0.0
    assert rules.meta_leakage("저는 AI라서 잘 몰라요.") == 0.0
    assert rules.meta_leakage("What do you think the next step is?") == 1.0
    assert rules.repetition("the cat sat on the mat", 3) == 1.0
    assert rules.repetition("go on go on go on go on", 3) == pytest.approx(2 / 6)
    assert rules.language("What do you think?", "what is a fraction") == 1.0
    assert rules.language("What do you think?", "분수가 뭐예요?") == 0.0
    assert rules.language("분수는 무엇일까요?", "분수가 뭐예요?") == 1.0
    assert rules.language("anything", "12 + 5 = ?") == 1.0  # no letters: nothing to comply with
    assert rules.banned_words("The answer is 4.", ["the answer is"]) == 0.0
    assert rules.banned_words("What is 2+2?", ["the answer is"]) == 1.0
    assert rules.tone("Let's think it through.", ["let's"]) == 1.0
    assert rules.tone("Do it.", ["let's"]) == 0.0


def test_weights_pick_what_the_score_rewards():
    text, msgs = "The answer is 4.", [{"role": "user", "content": "what is 2+2"}]
    only_banned = RuleParams(weights={k: 0.0 for k in rules.RULES} | {"banned_words": 1.0}, banned_words=["answer"])
    assert rules.score_text(text, only_banned, msgs)[1] == 0.0
    only_length = RuleParams(weights={k: 0.0 for k in rules.RULES} | {"length": 1.0}, length_window=(1, 100))
    assert rules.score_text(text, only_length, msgs)[1] == 1.0
    # Tone counts only for characters that have keywords.
    p = RuleParams(
        weights={k: 0.0 for k in rules.RULES} | {"tone": 1.0, "length": 1.0},
        length_window=(1, 100),
        tone_keywords={"tutor": ["let's"]},
    )
    assert rules.score_text(text, p, msgs, "tutor")[1] == 0.5 and rules.score_text(text, p, msgs, "pirate")[1] == 1.0


def test_keep_top_k_and_pairs_per_prompt():
    rows = [
        {"prompt_id": pid, "sample_index": i, "response": f"{pid}{i}", "score": s, "messages": []}
        for pid, scores in (("a", [0.9, 0.2, 0.5]), ("b", [0.3, 0.35]))
        for i, s in enumerate(scores)
    ]
    kept = score.mark_kept(rows, ScoreParams(keep_top_k=1, keep_top_fraction=1.0))
    assert kept == 2 and [r["response"] for r in rows if r["keep"]] == ["a0", "b1"]
    pairs = score.dpo_pairs(rows, min_margin=0.1)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a0", "a1")]  # b: 0.05 apart, below the margin
    assert len(score.dpo_pairs(rows, min_margin=0.0)) == 2


def test_reward_model_adds_or_replaces(tiny_model_dir, tmp_path):
    """A local sequence-classification model (random, tiny) as the reward: its value is written
    per sample; `replace` makes it the score, `add` weighs it in with the rules."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(rm_dir)
    rows = [
        {"prompt_id": f"p{i}", "response": t, "messages": [{"role": "user", "content": "hi"}]}
        for i, t in enumerate(["What do you think?", "The answer is 4."])
    ]
    src = write_lines(tmp_path / "samples.jsonl", rows)
    for mode in ("replace", "add"):
        p = ScoreParams(reward_model={"path": str(rm_dir), "mode": mode, "weight": 1.0})
        score.run(p, src, tmp_path / f"{mode}.jsonl", tmp_path / "pairs.jsonl")
    replaced = list(read_jsonl(tmp_path / "replace.jsonl"))
    added = list(read_jsonl(tmp_path / "add.jsonl"))
    for r, a in zip(replaced, added):
        assert 0.0 < r["scores"]["reward_model"] < 1.0 and r["score"] == r["scores"]["reward_model"]
        rule_only = rules.score_text(a["response"], RuleParams(), a["messages"])[1]
        assert a["score"] != rule_only and a["scores"]["reward_model"] == pytest.approx(r["scores"]["reward_model"])
    with pytest.raises(FileNotFoundError, match="score.reward_model.path"):
        score.run(
            ScoreParams(reward_model={"path": str(tmp_path / "nope")}), src, tmp_path / "x.jsonl", tmp_path / "y.jsonl"
        )


SELF_AS_MODEL = [
    "I'm Vicuna, a language model trained by LMSYS.",
    "I am Aria, a large language model.",
    "I am just a language model, so I can't.",
    "My name is ChatGPT.",
    "I am an AI assistant developed by Alibaba Cloud.",
    "I was trained by OpenAI.",
    "I'm Claude, an AI assistant made by Anthropic.",
    "I am Qwen, created by Alibaba Cloud.",
    "저는 OpenAI가 개발한 AI 언어 모델입니다.",
]
IN_CHARACTER = [
    "I'm Claude, your guide today.",  # a character may be called Claude
    "I was trained by the old captain of this ship!",
    "I'm Aria, a student like you. What shall we study?",
    "My name is Gemini.",
    "Language models are trained by companies.",
]


@pytest.mark.parametrize("text", SELF_AS_MODEL)
def test_a_reply_that_names_itself_another_model_leaks(text):
    assert rules.meta_leakage(text) == 0.0


@pytest.mark.parametrize("text", IN_CHARACTER)
def test_a_character_introducing_itself_does_not(text):
    assert rules.meta_leakage(text) == 1.0


def test_score_streams_each_prompts_samples_and_refuses_them_apart(tmp_path):
    from conftest import write_lines

    from loraloop.params import DataError

    rows = [
        {
            "prompt_id": pid,
            "sample_index": i,
            "response": f"What is {pid}{i}?",
            "messages": [{"role": "user", "content": "hi"}],
        }
        for pid, i in (("a", 0), ("a", 1), ("b", 0), ("b", 1))
    ]
    samples = write_lines(tmp_path / "samples.jsonl", rows)
    monkey_batch = score.BATCH
    score.BATCH = 3  # a prompt's samples split across two scoring batches
    try:
        stats = score.run(
            ScoreParams(keep_top_k=1, keep_top_fraction=1.0), samples, tmp_path / "s.jsonl", tmp_path / "p.jsonl"
        )
    finally:
        score.BATCH = monkey_batch
    assert stats["samples"] == 4 and stats["kept"] == 2
    write_lines(samples, [rows[0], rows[2], rows[1]])
    with pytest.raises(DataError, match="the samples of prompt 'a' are not together"):
        score.run(ScoreParams(), samples, tmp_path / "s.jsonl", tmp_path / "p.jsonl")
