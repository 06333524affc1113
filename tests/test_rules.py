import pytest

from conftest import write_lines

from stages import rules, score
from stages.io import read_jsonl
from stages.params import ScoreParams


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
    p = ScoreParams()
    _, socratic = rules.score_text("Good start. What do both denominators need to share before you add?", p)
    _, lecture = rules.score_text("The answer is 7/12. Memorize the method and apply it to every problem.", p)
    assert socratic == pytest.approx(0.8) and lecture == pytest.approx(0.2)  # (0.5+0.5+1)/2.5, (0+0.5+0)/2.5


def test_score_stage_weights_and_keep(tmp_path):
    rows = [{"prompt_id": f"p{i}", "response": text} for i, text in enumerate(
        ["The answer is 4.", "What is 2 plus 2? Count it out loud, what do you get?", "Hmm.", "What do you think comes next?"])]
    src = write_lines(tmp_path / "samples.jsonl", rows)
    stats = score.run(ScoreParams(keep_top_fraction=0.5, weight_floor=0.1), src, tmp_path / "scored.jsonl")
    out = list(read_jsonl(tmp_path / "scored.jsonl"))
    assert stats["kept"] == 2
    assert [r["keep"] for r in out] == [False, True, False, True]
    assert all(r["weight"] >= 0.1 for r in out)
    assert set(out[1]["scores"]) == {"question_ratio", "length", "followup_question"}
