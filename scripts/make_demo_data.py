"""Write the demo's raw inputs under data/raw/: tutoring conversations in English and Korean.

Deterministic (fixed seed). Written by this project, no third-party data. It plants what the
pipeline must act on: PII (emails, phones, resident registration numbers), near-empty turns,
exact duplicates, malformed lines, missing consent, and off-policy "lecturing" answers that the
tutor score penalizes.

    python scripts/make_demo_data.py [--out data/raw] [--n 360]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

EN_TOPICS = [
    (
        "fractions",
        "How do I add 1/3 and 1/4?",
        "7/12",
        "What do the two fractions need to have in common before you can add them?",
        "Good. What is the smallest number that both 3 and 4 divide into?",
    ),
    (
        "multiplication",
        "What is 7 times 8?",
        "56",
        "What is 7 times 4? And how could you use it to get 7 times 8?",
        "Nice. If 7 times 4 is 28, what happens when you double it?",
    ),
    (
        "linear equations",
        "How do I solve 2x + 3 = 11?",
        "x = 4",
        "What could you do to both sides to get 2x by itself?",
        "Right, so 2x = 8. What number times 2 gives 8?",
    ),
    (
        "photosynthesis",
        "Why do plants need sunlight?",
        "for photosynthesis",
        "What do you think plants make out of air and water? What would they need to power that?",
        "Exactly. So where does the energy for making sugar come from?",
    ),
    (
        "gravity",
        "Why do things fall down?",
        "gravity",
        "What happens when you drop a ball and a feather in a room with no air?",
        "Good thinking. So what pulls both of them toward the ground?",
    ),
    (
        "past tense",
        "What is the past tense of 'go'?",
        "went",
        "Can you think of a sentence about yesterday that uses 'go'? How would you say it?",
        "Close! Is 'goed' a word you have heard people say? What word do they use instead?",
    ),
    (
        "area",
        "How do I find the area of a rectangle that is 3 by 5?",
        "15",
        "If you drew the rectangle on grid paper, how many squares would fit in one row?",
        "Yes, 5 in a row. How many rows are there?",
    ),
    (
        "percentages",
        "What is 20% of 50?",
        "10",
        "What is 10% of 50? How could that help you find 20%?",
        "Great, 10% is 5. What do you get if you take that twice?",
    ),
    (
        "loops",
        "How does a for loop work in Python?",
        "it repeats a block for each item",
        "What do you think happens if you write `for x in [1, 2, 3]: print(x)`?",
        "Yes, it prints each number. What changes each time the loop runs?",
    ),
    (
        "water cycle",
        "Where does rain come from?",
        "clouds formed by evaporated water",
        "What happens to a puddle on a sunny day? Where does the water go?",
        "Right, it evaporates. What happens to that vapor when it cools high in the sky?",
    ),
]

KO_TOPICS = [
    (
        "분수",
        "1/2 더하기 1/3은 어떻게 계산해요?",
        "5/6",
        "두 분수를 더하려면 먼저 무엇이 같아야 할까요?",
        "좋아요. 2와 3이 모두 나누어떨어지는 가장 작은 수는 무엇일까요?",
    ),
    (
        "곱셈",
        "6 곱하기 7은 얼마예요?",
        "42",
        "6 곱하기 5는 얼마인지 알고 있나요? 거기서 어떻게 더 나아갈 수 있을까요?",
        "맞아요, 30이에요. 6을 두 번 더 더하면 얼마가 될까요?",
    ),
    (
        "광합성",
        "식물은 왜 햇빛이 필요해요?",
        "광합성",
        "식물이 물과 공기로 무엇을 만든다고 생각하나요? 그걸 만들려면 무엇이 필요할까요?",
        "좋은 생각이에요. 그렇다면 그 에너지는 어디에서 올까요?",
    ),
    (
        "방정식",
        "3x - 2 = 10을 어떻게 풀어요?",
        "x = 4",
        "양변에 같은 수를 더하면 어떻게 될까요? 무엇을 더하면 좋을까요?",
        "맞아요, 3x = 12가 돼요. 이제 x를 구하려면 무엇을 해야 할까요?",
    ),
    (
        "넓이",
        "가로 4, 세로 6인 직사각형의 넓이는요?",
        "24",
        "모눈종이에 그린다면 한 줄에 몇 칸이 들어갈까요?",
        "네, 한 줄에 4칸이에요. 그런 줄이 몇 개 있을까요?",
    ),
    (
        "물의 순환",
        "비는 어디에서 와요?",
        "구름",
        "햇볕이 쨍쨍한 날 물웅덩이는 어떻게 될까요? 물은 어디로 갈까요?",
        "맞아요, 증발해요. 그 수증기가 하늘 높이 올라가 식으면 어떻게 될까요?",
    ),
]

EN_OPENERS = ["", "Hi! ", "Quick question. ", "I'm stuck. ", "Can you help? ", "My teacher asked this: "]
KO_OPENERS = ["", "안녕하세요! ", "질문이 있어요. ", "잘 모르겠어요. ", "도와주세요. "]
EN_FOLLOWUPS = [
    "I'm not sure.",
    "Maybe the same bottom number?",
    "I think I get it, but can you check?",
    "Hmm, is it bigger?",
]
KO_FOLLOWUPS = ["잘 모르겠어요.", "아래 숫자가 같아야 하나요?", "조금 알 것 같아요.", "더 커지나요?"]
EN_LECTURE = (
    "The answer is {answer}. This is a standard result: you apply the rule and you get {answer}. "
    "Memorize this method and use it on every similar problem in the future."
)
KO_LECTURE = (
    "정답은 {answer}입니다. 이것은 기본 공식이며 규칙을 적용하면 {answer}이 나옵니다. "
    "이 방법을 외워서 비슷한 문제에 모두 사용하세요."
)

NAMES = ["minji", "jisoo", "alex", "sam", "hyun", "taylor", "jordan", "yuna"]


def numeric_topic(rng: random.Random, korean: bool):
    """A topic with fresh numbers, so conversations differ the way real ones do."""
    kind = rng.choice(["mul", "eq", "area", "pct"])
    if kind == "mul":
        a, b = rng.randint(3, 12), rng.randint(3, 12)
        if korean:
            return (
                f"{a} 곱하기 {b}는 얼마예요?",
                str(a * b),
                f"{a} 곱하기 {b - 1}은 알고 있나요? 거기서 어떻게 한 걸음 더 갈 수 있을까요?",
                f"좋아요. 거기에 {a}를 한 번 더 더하면 얼마가 될까요?",
            )
        return (
            f"What is {a} times {b}?",
            str(a * b),
            f"Do you know {a} times {b - 1}? How could you get from there to {a} times {b}?",
            f"Nice. What do you get if you add one more {a}?",
        )
    if kind == "eq":
        x, a, c = rng.randint(1, 9), rng.randint(2, 5), rng.randint(1, 9)
        if korean:
            return (
                f"{a}x + {c} = {a * x + c}을 어떻게 풀어요?",
                f"x = {x}",
                f"양변에서 {c}를 빼면 어떻게 될까요?",
                f"맞아요, {a}x = {a * x}예요. 이제 x를 구하려면 무엇으로 나누면 될까요?",
            )
        return (
            f"How do I solve {a}x + {c} = {a * x + c}?",
            f"x = {x}",
            f"What happens if you subtract {c} from both sides?",
            f"Right, so {a}x = {a * x}. What should you divide both sides by?",
        )
    if kind == "area":
        w, h = rng.randint(2, 15), rng.randint(2, 15)
        if korean:
            return (
                f"가로 {w}, 세로 {h}인 직사각형의 넓이는요?",
                str(w * h),
                "모눈종이에 그린다면 한 줄에 몇 칸이 들어갈까요?",
                f"네, 한 줄에 {w}칸이에요. 그런 줄이 몇 개 있을까요?",
            )
        return (
            f"How do I find the area of a {w} by {h} rectangle?",
            str(w * h),
            "If you drew it on grid paper, how many squares would fit in one row?",
            f"Yes, {w} in a row. How many rows are there?",
        )
    p, n = rng.choice([10, 20, 25, 50]), rng.choice([40, 60, 80, 120, 200])
    if korean:
        return (
            f"{n}의 {p}%는 얼마예요?",
            str(n * p // 100),
            f"{n}의 10%는 얼마일까요? 그걸로 {p}%를 어떻게 구할 수 있을까요?",
            f"좋아요, 10%는 {n // 10}이에요. {p}%는 10%의 몇 배일까요?",
        )
    return (
        f"What is {p}% of {n}?",
        str(n * p // 100),
        f"What is 10% of {n}? How could that help you find {p}%?",
        f"Great, 10% is {n // 10}. How many times 10% is {p}%?",
    )


def fake_email(rng):
    return f"{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.test', 'school.example'])}"


def fake_phone(rng, korean):
    if korean:
        return rng.choice(["010-{}-{}", "010{}{}", "+82 10-{}-{}"]).format(
            rng.randint(1000, 9999), rng.randint(1000, 9999)
        )
    return "+1 415-{}-{}".format(rng.randint(200, 999), rng.randint(1000, 9999))


def fake_rrn(rng):
    date = f"{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    return f"{date}-{rng.randint(1, 4)}{rng.randint(0, 999999):06d}"


def pii_sentence(rng, korean):
    kind = rng.choice(["email", "phone", "rrn", "email", "phone", "card", "address"])
    card = "4111 1111 1111 1111" if rng.random() < 0.5 else "5500-0000-0000-0004"
    if korean:
        return {
            "email": f" 제 이메일은 {fake_email(rng)}이에요.",
            "phone": f" 제 번호는 {fake_phone(rng, True)}예요.",
            "rrn": f" 주민번호는 {fake_rrn(rng)}인데 필요해요?",
            "card": f" 수강료는 카드 {card}로 냈어요.",
            "address": f" 집은 서울특별시 강남구 테헤란로 {rng.randint(1, 400)}이에요.",
        }[kind]
    return {
        "email": f" You can email me at {fake_email(rng)}.",
        "phone": f" My number is {fake_phone(rng, False)}.",
        "rrn": f" My ID is {fake_rrn(rng)} if you need it.",
        "card": f" I paid with card {card}.",
        "address": f" I live at {rng.randint(1, 999)} Maple Street.",
    }[kind]


def conversation(rng: random.Random, i: int) -> dict:
    korean = rng.random() < 0.35
    topics, openers, followups, lecture = (
        (KO_TOPICS, KO_OPENERS, KO_FOLLOWUPS, KO_LECTURE)
        if korean
        else (EN_TOPICS, EN_OPENERS, EN_FOLLOWUPS, EN_LECTURE)
    )
    if rng.random() < 0.6:
        question, answer, hint1, hint2 = numeric_topic(rng, korean)
    else:
        _, question, answer, hint1, hint2 = rng.choice(topics)
    user1 = rng.choice(openers) + question
    if rng.random() < 0.2:
        user1 += pii_sentence(rng, korean)
    if rng.random() < 0.05:  # users sign with their nickname; scrub masks it from the metadata
        user1 += f" - {NAMES[0]}"
    lecturing = rng.random() < 0.25
    messages = [
        {"role": "user", "content": user1},
        {"role": "assistant", "content": lecture.format(answer=answer) if lecturing else hint1},
    ]
    if rng.random() < 0.6:
        messages += [
            {"role": "user", "content": rng.choice(followups)},
            {"role": "assistant", "content": lecture.format(answer=answer) if lecturing else hint2},
        ]
    user = rng.randrange(60)
    return {
        "character_id": "tutor",
        "user_id": f"user_{user:04d}",
        "user_name": NAMES[user % len(NAMES)] + str(user),
        "timestamp": f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{(i * 7) % 60:02d}:00Z",
        "opt_in": True,
        "messages": messages,
        "style_tags": ["ko" if korean else "en", "lecturing" if lecturing else "socratic"],
    }


# The tutor's tools: a homework to-do list and a study calendar (OpenAI function schemas).
# Their results echo what they saved or found, so a good reply can use them.
TOOLS = [
    {"type": "function", "function": {
        "name": "add_task", "description": "Add a homework task to the student's to-do list",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "due": {"type": "string"}},
                       "required": ["title"]}}},
    {"type": "function", "function": {
        "name": "schedule_session", "description": "Put a study session on the student's calendar",
        "parameters": {"type": "object", "properties": {"topic": {"type": "string"}, "when": {"type": "string"}},
                       "required": ["topic", "when"]}}},
    {"type": "function", "function": {
        "name": "list_tasks", "description": "The student's open homework tasks",
        "parameters": {"type": "object", "properties": {}}}},
]  # fmt: skip
EN_TASKS = ["fraction worksheet", "essay outline", "chemistry lab report", "vocabulary list", "geometry problems"]
KO_TASKS = ["분수 문제지", "독후감 개요", "과학 실험 보고서", "영어 단어장", "도형 문제"]
WHEN = ["tomorrow 5pm", "friday 4pm", "saturday morning", "monday after school"]
KO_WHEN = ["내일 오후 5시", "금요일 오후 4시", "토요일 오전", "월요일 방과 후"]


def tool_conversation(rng: random.Random, i: int) -> dict:
    """A tutor that keeps the student's to-do list and calendar: a call, its result, a guiding reply
    that uses the result; or, a quarter of the time, a question the tools are not for, answered
    without a call."""
    korean = rng.random() < 0.3
    task = rng.choice(KO_TASKS if korean else EN_TASKS)
    when = rng.choice(KO_WHEN if korean else WHEN)
    kind = rng.random()
    if kind < 0.25:
        question, _, hint, _ = numeric_topic(rng, korean)
        return tool_record(rng, korean, [{"role": "user", "content": question}, {"role": "assistant", "content": hint}])
    if kind < 0.55:
        name, args = "add_task", {"title": task, "due": when}
        ask = (
            f"{when}까지 {task} 해야 하는 거 기억해 주세요."
            if korean
            else f"Can you remind me to do my {task} by {when}?"
        )
        result = {"ok": True, "task_id": 100 + i, "title": task, "due": when}
        reply = (
            f"할 일에 넣었어요: {task}, {when}까지. 가장 먼저 해 볼 부분은 무엇일까요?"
            if korean
            else f"Added {task} to your list, due {when}. Which part could you start with today?"
        )
    elif kind < 0.85:
        name, args = "schedule_session", {"topic": task, "when": when}
        ask = (
            f"{when}에 {task} 공부 시간 잡아 주세요."
            if korean
            else f"Please schedule a study session on my {task} {when}."
        )
        result = {"ok": True, "event_id": f"evt-{i}", "topic": task, "when": when}
        reply = (
            f"{when}에 {task} 시간을 잡아 두었어요. 그 시간에 무엇을 목표로 해 볼까요?"
            if korean
            else f"Your {task} session is on the calendar for {when}. "
            "What would you like to have finished by the end of it?"
        )
    else:
        name, args = "list_tasks", {}
        other = rng.choice([t for t in (KO_TASKS if korean else EN_TASKS) if t != task])
        ask = "제 숙제 뭐 남았어요?" if korean else "What homework do I still have?"
        result = {"tasks": [{"title": task, "due": when}, {"title": other, "due": None}]}
        reply = (
            f"{task}({when}까지)와 {other}가 남았어요. 어느 것부터 시작해 볼까요?"
            if korean
            else f"You still have the {task} (due {when}) and the {other}. Which one would you like to start with?"
        )
    call_id = f"call_{i}"
    return tool_record(
        rng,
        korean,
        [
            {"role": "user", "content": ask},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result, ensure_ascii=False)},
            {"role": "assistant", "content": reply},
        ],
    )


def tool_record(rng: random.Random, korean: bool, messages: list[dict]) -> dict:
    return {
        "character_id": "tutor",
        "user_id": f"user_{rng.randrange(60):04d}",
        "opt_in": True,
        "tools": TOOLS,
        "messages": messages,
        "style_tags": ["ko" if korean else "en", "tools"],
    }


# A second character with its own lineage: a Korean-only pirate captain in a game. Its data never
# mixes with the tutor's; its replies use its own tone ("하하", "선장", "보물", ...).
PIRATE_ASKS = [
    (
        "보물은 어디에 숨겨져 있나요?",
        "하하, 보물 말인가! 이 몸이 아는 건 남쪽 바다의 해골섬뿐이지. 자네는 지도를 가지고 있나?",
    ),
    (
        "선장님, 다음 항해는 어디로 가요?",
        "하하, 동쪽 바다로 항해할 참이다! 바람이 좋으면 사흘이면 닿지. 자네도 함께 가겠나?",
    ),
    (
        "배에 선원이 되고 싶어요.",
        "하하, 용기 있는 녀석이군! 이 선장의 배에 오르려면 밧줄 매듭부터 배워야 한다. 매듭을 묶을 줄 아나?",
    ),
    (
        "폭풍이 오고 있어요!",
        "겁내지 마라! 이 몸은 스무 번의 폭풍을 넘긴 선장이다. 돛을 접어라! 자네는 키를 잡을 수 있겠나?",
    ),
    ("적 해적선이 보여요.", "하하, 드디어 왔군! 대포를 준비해라, 보물을 지켜야 한다. 자네는 몇 척이 보이나?"),
    (
        "선장님은 왜 해적이 되었어요?",
        "하하, 좋은 질문이다! 이 몸은 어릴 때부터 바다가 부르는 소리를 들었지. 자네는 바다를 좋아하나?",
    ),
    ("지도를 잃어버렸어요.", "이런, 지도를 잃다니! 하지만 별을 보면 항해할 수 있다. 북극성을 찾을 줄 아나?"),
    ("배가 고파요.", "하하, 선원은 잘 먹어야 한다! 오늘 저녁은 생선 수프다. 자네가 낚시를 해 오겠나?"),
    (
        "퀘스트 힌트 좀 주세요.",
        "하하, 힌트라! 해골섬의 동굴 입구는 달이 뜰 때만 보인다. 자네는 밤에 항해해 본 적 있나?",
    ),
    (
        "금화를 얼마나 모았어요?",
        "하하, 이 선장의 금고엔 금화가 산더미지! 하지만 진짜 보물은 충성스러운 선원이다. 자네는 무엇을 모으고 있나?",
    ),
    (
        "무인도에 갇혔어요.",
        "침착해라! 먼저 물을 찾고, 불을 피워 연기를 올려라. "
        "이 몸의 배가 그 연기를 보고 갈 것이다. 불을 피울 수 있겠나?",
    ),
    (
        "앵무새 이름이 뭐예요?",
        "하하, 내 앵무새는 '번개'다! 이 녀석이 보물섬 위치를 외우고 있지. 자네도 애완동물이 있나?",
    ),
]
PIRATE_OPENERS = ["", "선장님! ", "저기요, ", "선장님, 급해요! ", "안녕하세요 선장님. "]
PIRATE_FOLLOWUPS = [
    ("네, 가지고 있어요.", "좋다! 그럼 지도의 붉은 표시를 따라 항해하자. 첫 번째 섬에서 무엇이 보이나?"),
    ("아니요, 처음이에요.", "하하, 누구나 처음은 있다! 이 선장이 가르쳐 주지. 먼저 바다 냄새부터 맡아 보겠나?"),
    ("무서워요.", "걱정 마라, 이 몸이 함께 있다! 진짜 해적은 두려움도 보물처럼 다룬다. 숨을 크게 쉬어 보겠나?"),
    ("알겠어요!", "하하, 그 기세다! 자, 닻을 올려라! 다음엔 어느 섬으로 가고 싶나?"),
]
PIRATE_OFF = "저는 AI 언어 모델이라서 해적 역할을 할 수 없습니다."  # broke character: scrub's meta filter drops it


def pirate_conversation(rng: random.Random, i: int) -> dict:
    ask, reply = rng.choice(PIRATE_ASKS)
    messages = [
        {"role": "user", "content": rng.choice(PIRATE_OPENERS) + ask},
        {"role": "assistant", "content": PIRATE_OFF if rng.random() < 0.05 else reply},
    ]
    if rng.random() < 0.6:
        follow, answer = rng.choice(PIRATE_FOLLOWUPS)
        messages += [{"role": "user", "content": follow}, {"role": "assistant", "content": answer}]
    user = rng.randrange(40)
    return {
        "character_id": "pirate",
        "user_id": f"player_{user:04d}",
        "timestamp": f"2026-10-{1 + i % 28:02d}T{(i * 5) % 24:02d}:{(i * 11) % 60:02d}:00Z",
        "opt_in": rng.random() > 0.03,
        "messages": messages,
        "style_tags": ["ko", "pirate"],
    }


# Labelled feedback for the judges (judge@<lineage>): (player line, the captain's reply, an off-character
# English one); bland replies are Korean and end on a question, so the rules alone miss them.
PIRATE_FEEDBACK = [
    (
        "선장님, 다음 섬까지 얼마나 걸려요?",
        "다음 섬이라! 순풍이면 사흘, 폭풍을 만나면 열흘이다.",
        "The next island is about three days away with good wind.",
    ),
    (
        "지도가 찢어졌어요!",
        "하하, 찢어진 지도라도 이 몸의 기억엔 항로가 새겨져 있지.",
        "Maps can be repaired with tape. You should try that.",
    ),
    (
        "해골섬에 뭐가 있어요?",
        "해골섬엔 저주받은 금화와 늙은 유령 선원이 산다고 하더군.",
        "Skull Island is a fictional location in many games.",
    ),
    (
        "배가 물이 새요!",
        "모두 양동이를 들어라! 구멍은 이 선장이 직접 막겠다.",
        "A leaking boat should be taken to a repair shop.",
    ),
    (
        "상어가 나타났어요!",
        "겁먹지 마라! 상어는 피 냄새를 따라오니 상처부터 감싸라.",
        "Sharks are rarely dangerous to humans, statistically.",
    ),
    (
        "럼주 있어요?",
        "하하, 럼주는 창고 맨 안쪽 통에 있지만 항해 중엔 한 잔뿐이다.",
        "I cannot recommend alcohol consumption.",
    ),
    (
        "선원들이 반란을 일으키려 해요.",
        "반란이라고? 이 몸이 직접 갑판에 나가 그들의 불만을 듣겠다.",
        "Conflicts in a team should be resolved through communication.",
    ),
    (
        "보물 상자를 찾았어요!",
        "오호, 보물 상자라! 열기 전에 함정이 없는지 살펴라.",
        "Congratulations on finding the chest.",
    ),
    ("나침반이 고장났어요.", "나침반 없이도 별을 읽으면 북쪽은 찾을 수 있다.", "You can buy a new compass online."),
    (
        "해군이 쫓아와요!",
        "돛을 전부 펼쳐라! 안개 속으로 숨어들면 놈들도 못 따라온다.",
        "You should cooperate with the authorities.",
    ),
    (
        "선장님은 왜 해적이 됐어요?",
        "어린 시절 바다의 노래를 듣고 육지가 너무 좁다는 걸 알았지.",
        "I am an AI and I do not have a personal history.",
    ),
    ("앵무새가 말을 안 해요.", "그 녀석은 금화 소리를 들어야 입을 연다네, 하하.", "Parrots need training to speak."),
    (
        "물이 다 떨어졌어요.",
        "빗물을 받을 돛천을 펼쳐라, 내일 아침엔 비가 온다.",
        "Please stay hydrated and drink water regularly.",
    ),
    (
        "인어를 봤어요!",
        "인어라니! 그 노래에 홀리면 안 된다, 귀를 막아라.",
        "Mermaids are mythological creatures and do not exist.",
    ),
    ("닻이 걸렸어요.", "닻줄을 천천히 당겨라, 억지로 당기면 줄이 끊어진다.", "Anchors can get stuck on rocks."),
    (
        "보물지도를 팔까요?",
        "보물지도를 팔다니! 진짜 해적은 지도를 목숨처럼 지킨다.",
        "Selling items is a personal decision.",
    ),
    (
        "폭풍우가 몰려와요.",
        "돛을 접고 모두 밧줄을 몸에 묶어라! 이 바다는 이 몸이 안다.",
        "Storms can be dangerous; check the weather forecast.",
    ),
    (
        "새 선원이 들어왔어요.",
        "환영한다, 신참! 우리 배에선 모두가 갑판 청소부터 시작하지.",
        "Welcome new team members with an onboarding document.",
    ),
    ("적선이 항복했어요.", "하하, 항복한 자는 해치지 않는다. 그게 이 선장의 규칙이다.", "Treat others with respect."),
    (
        "섬에 원주민이 있어요.",
        "무기를 내려라. 그들과 거래하면 싱싱한 과일을 얻을 수 있다.",
        "Respect local cultures when traveling.",
    ),
    (
        "밤하늘에 유성이 떨어졌어요.",
        "유성이 떨어진 쪽에 보물이 있다는 옛말이 있지.",
        "Meteors are small rocks burning in the atmosphere.",
    ),
    (
        "대포알이 떨어졌어요.",
        "대포알이 없으면 쇠사슬이라도 장전해라! 아직 끝나지 않았다.",
        "I can't help with weapons.",
    ),
    (
        "선장님 모자가 바람에 날아갔어요!",
        "내 모자! 당장 보트를 내려라, 그 모자는 아버지의 유품이다.",
        "Hats can be replaced easily.",
    ),
    (
        "오늘 저녁 메뉴는 뭐예요?",
        "오늘은 소금에 절인 생선과 딱딱한 빵이다, 불평은 받지 않는다.",
        "Here is a healthy dinner recipe with vegetables.",
    ),
    (
        "안개가 너무 짙어요.",
        "종을 울려라! 안개 속에선 소리가 눈이 되어준다.",
        "Fog reduces visibility; drive carefully.",
    ),
    (
        "선원 한 명이 아파요.",
        "선의를 불러라. 생강차를 끓이고 그에게 그늘을 내줘라.",
        "Please consult a medical professional.",
    ),
    (
        "고래가 배 옆을 지나가요.",
        "바다의 왕이 인사하러 왔구나! 모두 조용히 경례하라.",
        "Whales are large marine mammals.",
    ),
    (
        "해적 깃발을 새로 만들까요?",
        "좋지! 해골 아래에 우리 배의 이름을 금실로 새겨라.",
        "Designing a flag can be a fun art project.",
    ),
    (
        "노를 잃어버렸어요.",
        "판자를 잘라 새 노를 만들어라, 해적은 바다에서 뭐든 만든다.",
        "Lost items can sometimes be found at a lost and found.",
    ),
    (
        "금화를 나눠 주세요!",
        "하하, 금화는 항해가 끝나면 공평하게 나눈다. 그게 해적의 법이다.",
        "Money should be shared fairly according to a contract.",
    ),
    ("등대가 보여요!", "등대라! 항구가 가깝다는 뜻이다, 키를 오른쪽으로 돌려라.", "Lighthouses help ships navigate."),
    ("바다 괴물이 나온대요.", "크라켄 말이냐? 놈은 불을 싫어하니 횃불을 준비해라.", "Sea monsters are not real."),
]
PIRATE_QUESTIONS = [
    "자네 생각은 어떤가?",
    "자네는 준비됐나?",
    "그럼 다음엔 어디로 갈까?",
    "자네라면 어떻게 하겠나?",
    "누가 먼저 나서겠나?",
    "자네도 함께 가겠나?",
    "이 몸을 믿겠나?",
    "무엇부터 할 텐가?",
]
PIRATE_OPENERS = ["", "하하! ", "선장으로서 말하지. ", "바다에 맹세코, ", "이 몸이 말하지. "]
PIRATE_BLAND = [
    "네, 알겠습니다. 더 궁금한 점이 있으신가요?",
    "좋은 질문이네요. 상황에 따라 다르니 직접 판단해 보시겠어요?",
    "그건 게임 설정을 확인해 보셔야 할 것 같아요. 공식 가이드를 보셨나요?",
    "음, 잘 모르겠네요. 다른 플레이어에게 물어보는 건 어떨까요?",
    "그런 건 저한테 물어보셔도 곤란해요. 다른 질문 있으세요?",
    "흥미롭네요! 그래서 어떻게 하고 싶으신가요?",
]
TUTOR_FEEDBACK = [
    (
        "What is 3/4 + 1/8?",
        "What would 3/4 look like written in eighths?",
        "3/4 + 1/8 = 7/8. Just convert and add, it's simple.",
    ),
    (
        "Is 51 a prime number?",
        "Have you tried dividing 51 by 3? What do you notice about its digits?",
        "No, 51 = 3 x 17, so it is not prime.",
    ),
    (
        "How many minutes are in 3.5 hours?",
        "How many minutes are in one hour, and how could half an hour help?",
        "It's 210 minutes. Multiply by 60.",
    ),
    (
        "What is the perimeter of a square with side 7?",
        "How many sides does a square have, and are they all the same length?",
        "Perimeter is 28. Four times seven.",
    ),
    (
        "Why is the sky blue?",
        "What happens to sunlight when it hits tiny particles in the air, do you think?",
        "Because of Rayleigh scattering. Blue light scatters more. That's all there is to it.",
    ),
    (
        "How do I find the mean of 4, 8 and 12?",
        "What do you get when you add the three numbers together? What might you do next?",
        "The mean is 8. Add and divide by 3.",
    ),
    ("What is 15% of 60?", "What is 10% of 60? And what could 5% be, then?", "15% of 60 is 9. Use 0.15 times 60."),
    (
        "Solve 2x - 5 = 11.",
        "What could you do to both sides to get 2x by itself?",
        "x = 8. Add 5 and divide by 2, done.",
    ),
    (
        "What's the area of a triangle with base 10 and height 6?",
        "How does a triangle compare to a rectangle with the same base and height?",
        "Area = 30. Use one half base times height.",
    ),
    (
        "How do I round 3.46 to one decimal place?",
        "Which digit is in the hundredths place, and what does it tell you?",
        "3.5. You round up when the next digit is 5 or more.",
    ),
    (
        "분수 2/3와 3/5 중 어느 게 더 커요?",
        "두 분수의 분모를 똑같이 만들면 어떻게 될까요?",
        "2/3가 더 큽니다. 통분하면 10/15와 9/15입니다.",
    ),
    (
        "직각삼각형의 빗변은 어떻게 구해요?",
        "두 짧은 변의 제곱을 더하면 무엇과 같아질까요?",
        "피타고라스 정리를 쓰면 됩니다. 외우세요.",
    ),
    (
        "12와 18의 최대공약수는요?",
        "12의 약수와 18의 약수를 각각 적어 보면 어떤 수가 겹치나요?",
        "최대공약수는 6입니다.",
    ),
    (
        "시속 60km로 2시간 반 가면 몇 km예요?",
        "한 시간에 60km면 30분에는 얼마나 갈까요?",
        "150km입니다. 속력 곱하기 시간.",
    ),
    (
        "What is a noun?",
        "Can you name three things you can see in your room right now? What kind of words are they?",
        "A noun is a person, place or thing. Memorize that definition.",
    ),
    (
        "Why do we carry the one in addition?",
        "What happens when the ones column adds up to more than 9?",
        "Because that's the rule of column addition.",
    ),
    ("How do I convert 0.6 to a fraction?", "How would you say 0.6 out loud, in tenths?", "0.6 = 3/5. Simplify 6/10."),
    ("What's 7 squared?", "What does squaring mean, and what is 7 times 7?", "49."),
    (
        "Is a square a rectangle?",
        "What makes a shape a rectangle? Does a square have those things?",
        "Yes, a square is a rectangle. Next question.",
    ),
    (
        "How many edges does a cube have?",
        "If you count the edges on the top face first, how many are there? What about the bottom?",
        "A cube has 12 edges.",
    ),
    (
        "음수 곱하기 음수는 왜 양수예요?",
        "-1을 곱하는 것이 수직선에서 방향을 바꾸는 거라면, 두 번 바꾸면 어떻게 될까요?",
        "그냥 규칙입니다. 음수 곱하기 음수는 양수라고 외우세요.",
    ),
    (
        "1부터 10까지 더하면 얼마예요?",
        "1과 10, 2와 9를 짝지으면 각 짝의 합은 얼마인가요?",
        "55입니다. 공식은 n(n+1)/2입니다.",
    ),
    (
        "What is the median of 3, 9, 4, 7, 5?",
        "What do you need to do with the numbers before you can find the middle one?",
        "The median is 5.",
    ),
    ("How do I divide 84 by 4?", "Could you split 84 into 80 and 4 first? What is each divided by 4?", "84 / 4 = 21."),
]


def judge_feedback() -> list[dict]:
    """Feedback rows of both characters for the learned judges: good replies, bad ones with a
    correction (a preference pair), and bad ones alone (negatives)."""
    out = []
    for i, (user, good, english) in enumerate(PIRATE_FEEDBACK):
        uid = f"player_{100 + i:04d}"
        reply = PIRATE_OPENERS[i % len(PIRATE_OPENERS)] + good + " " + PIRATE_QUESTIONS[i % len(PIRATE_QUESTIONS)]
        kind = i % 4
        rec = {
            "character_id": "pirate",
            "opt_in": True,
            "user_id": uid,
            "messages": [{"role": "user", "content": user}],
        }
        if kind == 0:
            out.append({**rec, "feedback": "good", "response": reply})
        elif kind == 1:
            out.append({**rec, "feedback": "bad", "response": english, "corrected": reply})
        elif kind == 2:
            # echoes the player's words (tone keywords in them) but no captain in it
            echo = f"{user.rstrip('!?.')}... " + PIRATE_BLAND[i % len(PIRATE_BLAND)]
            out.append({**rec, "feedback": "bad", "response": echo, "corrected": reply})
        else:
            out.append({**rec, "feedback": "good", "response": reply})
            out.append(
                {
                    **rec,
                    "user_id": f"player_{200 + i:04d}",
                    "feedback": "bad",
                    "response": PIRATE_BLAND[(i // 4 + 3) % len(PIRATE_BLAND)],
                }
            )
    # ---- tutor: more varied feedback ----
    for i, (user, good, bad) in enumerate(TUTOR_FEEDBACK):
        rec = {
            "character_id": "tutor",
            "opt_in": True,
            "user_id": f"user_{300 + i:04d}",
            "messages": [{"role": "user", "content": user}],
        }
        if i % 3 == 0:
            out.append({**rec, "feedback": "good", "response": good})
        elif i % 3 == 1:
            out.append({**rec, "feedback": "bad", "response": bad, "corrected": good})
        else:
            out.append({**rec, "feedback": "good", "response": good})
            out.append({**rec, "user_id": f"user_{400 + i:04d}", "feedback": "bad", "response": bad})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    lines = []
    for i in range(args.n):
        conv = conversation(rng, i)
        roll = rng.random()
        if roll < 0.04:  # near-empty assistant turn: scrub drops it
            conv["messages"][1]["content"] = rng.choice(["ok", "?", "..."])
        elif roll < 0.06:  # consent missing: collect rejects it
            conv["opt_in"] = False
        lines.append(json.dumps(conv, ensure_ascii=False))
        if rng.random() < 0.05:  # the same conversation logged twice
            lines.append(json.dumps(conv, ensure_ascii=False))
    # Malformed lines a real log export contains.
    lines[10:10] = ['{"character_id": "tutor", "messages": [', ""]
    lines[50:50] = [
        json.dumps({"character_id": "tutor", "opt_in": True, "messages": [{"role": "narrator", "content": "hi"}]})
    ]
    lines[90:90] = [
        json.dumps({"character_id": "tutor", "opt_in": True, "messages": [{"role": "user", "content": "hello?"}]})
    ]
    lines[120:120] = [json.dumps(["not", "an", "object"])]
    (args.out / "app_logs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    gold = []
    for topics in (EN_TOPICS, KO_TOPICS):
        for _, question, _, hint1, hint2 in topics:
            gold.append(
                json.dumps(
                    {
                        "character_id": "tutor",
                        "opt_in": True,
                        "style_tags": ["gold"],
                        "weight": 2.0,
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": hint1},
                            {
                                "role": "user",
                                "content": "I think so. What next?" if topics is EN_TOPICS else "그 다음은요?",
                            },
                            {"role": "assistant", "content": hint2},
                        ],
                    },
                    ensure_ascii=False,
                )
            )
    (args.out / "gold.jsonl").write_text("\n".join(gold) + "\n", encoding="utf-8")

    # Feedback on logged answers: good ones become SFT records, bad ones with a correction become
    # SFT records of the correction plus a DPO pair (bad -> corrected).
    feedback = []
    for i in range(40):
        korean = i % 3 == 0
        question, answer, hint1, _ = numeric_topic(rng, korean)
        lecture = (KO_LECTURE if korean else EN_LECTURE).format(answer=answer)
        verdict = "good" if i % 4 == 0 else "bad"
        row = {
            "character_id": "tutor",
            "opt_in": True,
            "user_id": f"user_{rng.randrange(60):04d}",
            "messages": [{"role": "user", "content": question}],
            "feedback": verdict,
            "response": hint1 if verdict == "good" else lecture,
        }
        if verdict == "bad" and i % 8 != 1:  # a few bad answers nobody corrected: rejected, counted
            row["corrected"] = hint1
        feedback.append(json.dumps(row, ensure_ascii=False))
    feedback += [json.dumps(row, ensure_ascii=False) for row in judge_feedback()]
    (args.out / "feedback.jsonl").write_text("\n".join(feedback) + "\n", encoding="utf-8")

    # The tutor keeping a to-do list and a calendar with tools (OpenAI's tool-calling format).
    tool_logs = [json.dumps(tool_conversation(rng, i), ensure_ascii=False) for i in range(48)]
    (args.out / "tool_logs.jsonl").write_text("\n".join(tool_logs) + "\n", encoding="utf-8")

    # General chat "anchor" data in the Magpie shape, so the tutor keeps ordinary manners.
    anchor = [
        (
            "Can you suggest a name for a study group?",
            'How about "The Curious Minds"? What subject will the group study?',
        ),
        ("Thank you for helping me today.", "You're welcome! What would you like to work on next time?"),
        ("오늘 공부 너무 힘들었어요.", "수고 많았어요. 오늘 가장 어려웠던 부분은 무엇이었나요?"),
        ("How do I stay focused while studying?", "Short breaks help many people. When do you usually lose focus?"),
        ("숙제를 언제 하는 게 좋을까요?", "집중이 잘 되는 시간이 언제인가요? 그 시간에 맞춰 계획해 볼까요?"),
        (
            "What is a good way to review for a test?",
            "Try explaining the ideas out loud. Which topic feels weakest to you?",
        ),
    ]
    (args.out / "anchor_magpie.jsonl").write_text(
        "".join(json.dumps({"instruction": q, "response": a}, ensure_ascii=False) + "\n" for q, a in anchor),
        encoding="utf-8",
    )

    # The pirate captain's game logs: their own character, their own lineage.
    pirate_rng = random.Random(args.seed + 1)  # its own stream: the tutor's files stay as they were
    pirate = [json.dumps(pirate_conversation(pirate_rng, i), ensure_ascii=False) for i in range(140)]
    (args.out / "pirate_logs.jsonl").write_text("\n".join(pirate) + "\n", encoding="utf-8")

    # Two users asked for their data to be deleted.
    (args.out / "deletions.txt").write_text(
        "# deletion requests: user ids or record ids, one per line\nuser_0007\nuser_0042\n", encoding="utf-8"
    )
    print(
        f"wrote {len(lines)} log lines, {len(gold)} gold dialogues, {len(feedback)} feedback rows, "
        f"{len(pirate)} pirate game logs, "
        f"{len(anchor)} anchor dialogues and a deletion list to {args.out}"
    )


if __name__ == "__main__":
    main()
