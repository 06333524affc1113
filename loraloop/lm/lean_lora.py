"""A leaner forward and backward for PEFT's LoRA linear layers while training.

PEFT computes `base(x) + B(A(x)) * scaling` through autograd: the scaling and the sum are two more
passes over the layer's whole output, forward and backward, and autograd keeps a copy of each
intermediate. Here one autograd function does the same arithmetic with the scaling applied in the
rank-r space and the LoRA term accumulated into the base matmul's output (addmm_), forward and
backward: on the 2-core CPU the LoRA overhead over the frozen matmul drops by about a third.

Only the plain case takes this path (one active adapter, no dropout, no DoRA or other variant, not
merged, an nn.Linear base, all weights in one dtype); anything else runs PEFT's own forward, so
disabling the adapter (the reference for DPO / Rho-1) and mixed-adapter batches behave as before.
"""

from __future__ import annotations

import types

import torch


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T for a frozen W, b and trainable A [r, in], B [out, r]."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        x2 = x.reshape(-1, x.shape[-1])
        xa = x2 @ lora_a.t()
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(xa, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(x2, xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.in_shape = scaling, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])
        gb = g @ lora_b  # [M, r]: the gradient reaching the rank-r space, before the scaling
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, weight).addmm_(gb, lora_a, alpha=s).view(ctx.in_shape)
        if ctx.needs_input_grad[3]:
            grad_a = (gb.t() @ x2).mul_(s)
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ xa).mul_(s)
        return grad_x, None, None, grad_a, grad_b, None


def _plain_adapter(layer, x: torch.Tensor, kwargs: dict) -> str | None:
    """The one active adapter when this call is the plain case the lean function computes."""
    if layer.disable_adapters or layer.merged or kwargs:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    base = layer.base_layer
    if name in layer.lora_variant or not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
    if type(base) is not torch.nn.Linear or not frozen:
        return None
    dtypes = {x.dtype, base.weight.dtype, layer.lora_A[name].weight.dtype, layer.lora_B[name].weight.dtype}
    return name if len(dtypes) == 1 else None


def _lean_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = None if args else _plain_adapter(self, x, kwargs)
    if name is None:
        return self._peft_forward(x, *args, **kwargs)
    base = self.base_layer
    return _LoraLinear.apply(
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    )


def install(model) -> int:
    """Route the model's PEFT LoRA linear layers through the lean function; returns how many."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count
