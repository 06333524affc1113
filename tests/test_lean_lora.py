"""The lean LoRA linear and the in-place cross-entropy compute what PEFT's forward and
F.cross_entropy compute (values and gradients), and anything but the plain case keeps PEFT's path."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from loraloop.lm import lean_lora
from loraloop.lm import loss as lm_loss


def lora_model(tiny_model_dir, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(base, config)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; a non-zero B exercises every gradient
            torch.nn.init.normal_(p, std=0.05)
    return model


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.logits.detach(), grads


def test_lean_forward_and_backward_match_peft(tiny_model_dir):
    ids = torch.randint(0, 500, (3, 17))
    peft_model, lean_model = lora_model(tiny_model_dir), lora_model(tiny_model_dir)
    assert lean_lora.install(lean_model) == 2 * 3  # 2 layers x (q, v, down)
    assert lean_lora.install(lean_model) == 0  # installing twice changes nothing
    loss_p, logits_p, grads_p = loss_and_grads(peft_model, ids)
    loss_l, logits_l, grads_l = loss_and_grads(lean_model, ids)
    torch.testing.assert_close(logits_l, logits_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_l, loss_p, rtol=1e-6, atol=1e-6)
    assert grads_l.keys() == grads_p.keys() and len(grads_l) == 12
    for name in grads_p:
        torch.testing.assert_close(grads_l[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(g.abs().sum() > 0 for g in grads_l.values())


def test_lean_path_is_taken_only_in_the_plain_case(tiny_model_dir):
    ids = torch.randint(0, 500, (2, 9))
    model = lora_model(tiny_model_dir)
    lean_lora.install(model)
    calls = []
    original = lean_lora._LoraLinear.apply
    lean_lora._LoraLinear.apply = lambda *a: calls.append(1) or original(*a)
    try:
        model(input_ids=ids)
        assert len(calls) == 6
        calls.clear()
        with torch.no_grad(), model.disable_adapter():  # the base as DPO/Rho-1 reference: PEFT's path
            off = model(input_ids=ids).logits
        assert not calls
        with torch.no_grad():
            plain_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(input_ids=ids).logits
        torch.testing.assert_close(off, plain_base)
    finally:
        lean_lora._LoraLinear.apply = original


def test_dropout_keeps_peft_forward(tiny_model_dir):
    model = lora_model(tiny_model_dir, dropout=0.1)
    lean_lora.install(model)
    layer = next(m for m in model.modules() if hasattr(m, "_peft_forward"))
    x = torch.randn(2, 5, layer.in_features)
    assert lean_lora._plain_adapter(layer, x, {}) is None
    model.eval()  # dropout off in eval, but the module is still Dropout: PEFT's path
    assert lean_lora._plain_adapter(layer, x, {}) is None


def test_mixed_dtype_keeps_peft_forward(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    lean_lora.install(model)
    layer = next(m for m in model.modules() if hasattr(m, "_peft_forward"))
    assert lean_lora._plain_adapter(layer, torch.randn(1, 3, layer.in_features), {}) == "default"
    assert lean_lora._plain_adapter(layer, torch.randn(1, 3, layer.in_features, dtype=torch.float64), {}) is None


@pytest.mark.parametrize("n,vocab", [(1, 7), (13, 500), (64, 4099)])
def test_cross_entropy_matches_torch(n, vocab):
    torch.manual_seed(n)
    logits = torch.randn(n, vocab, dtype=torch.float64) * 4
    target = torch.randint(0, vocab, (n,))
    weight = torch.rand(n, dtype=torch.float64)
    a = logits.clone().requires_grad_()
    expected = F.cross_entropy(a, target, reduction="none")
    (expected * weight).sum().backward()
    b = logits.clone().requires_grad_()
    got = lm_loss.cross_entropy(b * 1.0, target)  # `* 1.0`: a fresh tensor, as the output layer's is
    (got * weight).sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(b.grad, a.grad)
