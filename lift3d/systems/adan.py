"""Adan: adaptive Nesterov momentum (Xie et al., arXiv 2208.06677, Algorithm 1), the optimizer of
threestudio's zero123 / image-condition configs (`system.optimizer.name: Adan`).

Per parameter, with gradient g_k, its change d_k = g_k - g_{k-1} (0 at the first step), betas
(b1, b2, b3) = (0.98, 0.92, 0.99) as in the reference PyTorch code (EMA weights of the old value):
    m_k = b1 m + (1 - b1) g_k                      (gradient momentum)
    v_k = b2 v + (1 - b2) d_k                      (momentum of the gradient change)
    n_k = b3 n + (1 - b3) (g_k + b2 d_k)^2         (second moment of the Nesterov gradient)
    u_k = (m_k / (1 - b1^k) + b2 v_k / (1 - b2^k)) / (sqrt(n_k / (1 - b3^k)) + eps)
    proximal weight decay (default):  theta <- (theta - lr u_k) / (1 + lr wd)
    no_prox=True:                     theta <- theta (1 - lr wd) - lr u_k
`max_grad_norm` > 0 first scales every gradient by min(1, max_grad_norm / ||all gradients||_2).
`foreach` is accepted for threestudio's configs (this implementation loops over tensors).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Tuple

import torch


class Adan(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: Tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float = 0.0, no_prox: bool = False,
                 foreach: bool = True) -> None:
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adan betas must be three numbers in [0, 1), got {betas}")
        if max_grad_norm < 0:
            raise ValueError(f"Adan max_grad_norm must be >= 0, got {max_grad_norm}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        no_prox=no_prox, foreach=foreach)
        super().__init__(params, defaults)

    def _clip_factor(self) -> float:
        max_norm = max(g["max_grad_norm"] for g in self.param_groups)
        if max_norm <= 0:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return float(torch.clamp(max_norm / (total + 1e-6), max=1.0))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor()
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad * clip
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["pre_grad"] = grad.clone()
                state["step"] += 1
                k = state["step"]
                diff = grad - state["pre_grad"]
                state["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
                state["exp_avg_diff"].mul_(b2).add_(diff, alpha=1 - b2)
                nesterov = grad + b2 * diff
                state["exp_avg_sq"].mul_(b3).addcmul_(nesterov, nesterov, value=1 - b3)
                denom = (state["exp_avg_sq"] / (1 - b3 ** k)).sqrt_().add_(eps)
                update = (state["exp_avg"] / (1 - b1 ** k) + b2 * state["exp_avg_diff"] / (1 - b2 ** k)) / denom
                if group["no_prox"]:
                    p.mul_(1 - lr * wd).add_(update, alpha=-lr)
                else:
                    p.add_(update, alpha=-lr).div_(1 + lr * wd)
                state["pre_grad"] = grad.clone()
        return loss


# optimizers lift3d adds to torch.optim's names (lift3d.systems.optim)
EXTRA_OPTIMIZERS = {"Adan": Adan}

__all__ = ["Adan", "EXTRA_OPTIMIZERS"]
