"""train.reference: what DPO and Rho-1 optimize against (the base, or the adapter the round starts
from), recorded by hash; its values are computed once before the loop and give the same adapter
as a reference forward in every step."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import round_in, small_params, write_lines
from peft import PeftModel

from loraloop.files import read_json
from loraloop.lm import loss as lm_loss
from loraloop.lm.chat import training_ids
from loraloop.lm.model import load_base, load_tokenizer
from loraloop.train import loop as train
from loraloop.workspace import Base

SYSTEM = {"role": "system", "content": "You are a patient tutor."}
PAIRS = [
    ("What is 3/4 + 1/8?", "What do both denominators need to share?", "The answer is 7/8."),
    ("Why is the sky blue?", "What happens to light when it hits air?", "Because of physics. Look it up."),
    ("How do I start an essay?", "Let's think: what is your main point?", "Just write something."),
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rows = [{"messages": [SYSTEM, {"role": "user", "content": q}], "chosen": c, "rejected": r} for q, c, r in PAIRS]
    return write_lines(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


def train_r2(project, r1, out, pairs_file, **overrides):
    """Round tutor-r2 (continuing tutor-r1) on the given pairs file; returns its output directory."""
    p = small_params(**{"feedback_pairs": False, **overrides})
    train.run(
        p,
        round_in(p, project, "tutor-r2", out),
        Base(project / "models/base"),
        out.parent / f"{out.name}_ckpt",
        scored=project / "rounds/tutor/tutor-r1/scored.jsonl",
        pairs=pairs_file,
    )
    return out


def first_loss(out) -> float:
    rows = (out / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    return float(rows[1].split("\t")[1])


def sequence_logp(model, tok, messages, reply) -> float:
    """log p(reply | messages), straight from the model's full logits."""
    ids, mask = training_ids(tok, messages + [{"role": "assistant", "content": reply}], 128)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return float(logp.gather(1, x[0, 1:, None])[:, 0][torch.tensor(mask[1:])].sum())


def test_start_and_base_references_give_the_hand_computed_dpo_loss(project, r1, pairs_file, tmp_path):
    beta = 2.0
    common = dict(method="dpo", steps=1, batch_size=len(PAIRS), dpo_beta=beta)
    start = train_r2(project, r1, tmp_path / "start", pairs_file, reference="start", **common)
    base = train_r2(project, r1, tmp_path / "base", pairs_file, reference="base", **common)

    # By hand: the policy at step 0 is r1's adapter; the reference is r1 itself or the base.
    tok = load_tokenizer(project / "models/base")
    # The adapter apart from the base (not merged, as inference loads it), so it can be switched off.
    adapter = round_in(small_params(), project, "tutor-r1").adapter
    model = PeftModel.from_pretrained(load_base(project / "models/base"), adapter).eval()
    policy, ref_base = [], []
    for q, c, r in PAIRS:
        msgs = [SYSTEM, {"role": "user", "content": q}]
        policy.append((sequence_logp(model, tok, msgs, c), sequence_logp(model, tok, msgs, r)))
        with model.disable_adapter():
            ref_base.append((sequence_logp(model, tok, msgs, c), sequence_logp(model, tok, msgs, r)))
    margins = torch.tensor([(pc - bc) - (pr - br) for (pc, pr), (bc, br) in zip(policy, ref_base)])
    by_hand = float(-F.logsigmoid(beta * margins).mean())

    assert first_loss(start) == pytest.approx(math.log(2), abs=1e-5)  # policy == reference: no margin yet
    assert first_loss(base) == pytest.approx(by_hand, rel=1e-4, abs=1e-5)
    assert abs(by_hand - math.log(2)) > 1e-3  # the two references really differ here

    r1_info = read_json(r1 / "ROUND.json")
    assert read_json(start / "ROUND.json")["reference"] == {
        "kind": "start",
        "round": "tutor-r1",
        "adapter_hash": r1_info["adapter_hash"],
    }
    assert read_json(base / "ROUND.json")["reference"] == {
        "kind": "base",
        "round": "base",
        "base_hash": read_json(project / "models/base/base.json")["hash"],
    }
    # The frozen reference adapter is not part of what is saved.
    saved = (start / "adapter/adapter_model.safetensors", r1 / "adapter/adapter_model.safetensors")
    from safetensors.torch import load_file

    assert load_file(saved[0]).keys() == load_file(saved[1]).keys()


def test_plain_sft_records_no_reference(project, r1, r2):
    assert read_json(r2 / "ROUND.json")["reference"] is None


@pytest.mark.parametrize(
    "setting",
    [
        dict(method="dpo", reference="base"),
        dict(method="dpo", reference="start"),
        dict(method="sft", token_weighting="rho1", reference="start"),
    ],
    ids=["dpo-base", "dpo-start", "rho1-start"],
)
def test_precomputed_reference_gives_the_same_adapter_bytes_as_per_step(project, r1, pairs_file, tmp_path, setting):
    common = dict(steps=3, batch_size=2, grad_accum=2, lr=0.01, **setting)
    once = train_r2(project, r1, tmp_path / "once", pairs_file, reference_logps="precompute", **common)
    every = train_r2(project, r1, tmp_path / "every", pairs_file, reference_logps="per_step", **common)
    a, b = (d / "adapter/adapter_model.safetensors" for d in (once, every))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != (r1 / "adapter/adapter_model.safetensors").read_bytes()  # it did train


def test_a_rows_losses_do_not_depend_on_its_batch(project):
    """What makes computing the reference once exact: in an aligned batch a row's token losses are
    the same alone, beside longer rows or beside shorter ones."""
    import random

    net = lm_loss.CountedTokenLoss(load_base(project / "models/base")).eval()
    g = torch.Generator().manual_seed(0)
    rows = [
        {"ids": torch.randint(0, 1000, (n,), generator=g).tolist(), "mask": [False] * 2 + [True] * (n - 2)}
        for n in (3, 5, 9, 23, 31, 32, 33, 40, 70, 130)
    ]

    def losses(idx):
        with torch.no_grad():
            batch = lm_loss.collate([rows[i] for i in idx], 0, "cpu", aligned=True)
            out = lm_loss.token_losses(net, batch)[0]
        return {i: out[k, : len(rows[i]["ids"]) - 1] for k, i in enumerate(idx)}

    alone = {i: losses([i])[i] for i in range(len(rows))}
    rng = random.Random(0)
    for _ in range(12):
        idx = rng.sample(range(len(rows)), rng.randint(2, 6))
        for i, values in losses(idx).items():
            assert torch.equal(values, alone[i]), (len(rows[i]["ids"]), [len(rows[j]["ids"]) for j in idx])
