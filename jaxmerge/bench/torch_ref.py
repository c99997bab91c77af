"""The PyTorch sides of ``jaxmerge bench train``: the ``ours`` coefficient step as a PyTorch user runs it.

transformers' model is built on the JAX side's weights without copying them (the NumPy view of each
CPU array becomes the tensor's storage: one copy of an 8B-shaped base serves every side), frozen, and
trained on the same batch with the same schedule as the JAX step. Two ways to merge k LoRAs:

* ``concat`` — the authors' release: every targeted ``nn.Linear`` wrapped by a rank-concatenated LoRA
  layer ``base(x) + ((x A_catᵀ) ⊙ m) B_catᵀ``, ``m[r] = leaky_relu(w[owner(r), l, j])·s[owner(r)]``;
* ``peft`` — PEFT with the k adapters loaded as k separate adapters, all active; the trainable
  coefficient of adapter i in module j of layer l enters as that adapter's scaling,
  ``leaky_relu(w[i, l, j])·s_i`` (PEFT keeps a float there; a tensor of the graph, assigned before
  every forward, is what a PEFT user has to do to train it).

and two losses: ``full`` — ``model(...).logits`` over ``[B, T, V]``, cross-entropy on the answer tokens
(the authors'); ``answer`` — the decoder's hidden states, the LM head on the answer rows only (what
jaxmerge does: ``batch["answer_index"]``). Every variant owns its coefficients ``w [k, L, M]`` (M in
``module_order``), a ``torch.optim.AdamW`` (weight decay 0) and the warmup-cosine schedule of
``optax.warmup_cosine_decay_schedule(0, lr, warm, total, 0)``.

Shapes: B rows, T tokens, A answer positions per row, V vocabulary.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping

import numpy as np

VARIANTS = ("concat-full", "concat-answer", "peft-full", "peft-answer")  # merge kind - loss


def _tensor(arr: np.ndarray):
    """A tensor on ``arr``'s memory (read-only JAX buffers included: the base is never written)."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(arr)


def hf_model(hf_config: Mapping, params, config):
    """transformers' ``AutoModelForCausalLM`` of ``hf_config`` (a config.json dict) whose weights are
    views of ``params`` (``jaxmerge.params.params_to_hf``); eval mode, every weight frozen."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..params import params_to_hf
    kw = {k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}
    cfg = AutoConfig.for_model(hf_config.get("model_type", "llama"), **kw, attn_implementation="sdpa")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    state = {k: _tensor(v) for k, v in params_to_hf(params, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:  # the head is the embedding (no lm_head tensor exists)
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if unexpected or missing:
        raise RuntimeError(f"torch reference: weights did not map (missing {missing}, unexpected {unexpected})")
    for name, mod in model.named_modules():  # buffers computed in __init__ (rotary inv_freq) are on meta
        if any(b.is_meta for b in mod.buffers(recurse=False)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, type(mod)(config=cfg))
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError("torch reference: tensors left on the meta device")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class _Coefficients:
    """The active variant's ``w [k, L, M]``: the LoRA layers read it at every forward."""
    w = None


def _concat_model(model, pool, modules, coef: _Coefficients):
    import torch
    import torch.nn.functional as F

    class ConcatLoRALinear(torch.nn.Module):
        """base(x) + ((x A_catᵀ) ⊙ m) B_catᵀ, m[r] = leaky_relu(w[owner[r], l, j])·s[owner[r]]."""

        def __init__(self, base, a, b, owner, scale, layer, j):
            super().__init__()
            self.base, self.layer, self.j = base, layer, j
            self.a, self.b, self.owner, self.scale = a, b, owner, scale

        def forward(self, x):
            m = (F.leaky_relu(coef.w[:, self.layer, self.j], 0.01) * self.scale)[self.owner]
            return self.base(x) + ((x @ self.a.T) * m) @ self.b.T

    for j, name in enumerate(modules):
        st = pool.modules[name]
        own = np.asarray(st.owner)
        R = int((own >= 0).sum())  # padding rows (owner -1, multiplier 0) come after every adapter's
        owner = torch.from_numpy(own[:R].astype(np.int64))
        scale = torch.from_numpy(np.array(st.scale, np.float32))
        a_all, b_all = _tensor(np.asarray(st.a)), _tensor(np.asarray(st.b))
        for layer_idx, layer in enumerate(model.model.layers):
            group = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            setattr(group, name, ConcatLoRALinear(getattr(group, name), a_all[layer_idx, :R],
                                                  b_all[layer_idx, :, :R], owner, scale, layer_idx, j))
    return model


def _peft_model(model, pool, modules, coef: _Coefficients):
    """PEFT with adapter i = ``pool``'s adapter i (its rank, alpha and modules), all k active; returns
    (PeftModel, ``set_scaling()`` that writes act(w)·s into every LoRA layer's scaling)."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    names = [f"a{i}" for i in range(pool.num_adapters)]
    targets = {i: [m for m in modules if pool.modules[m].ranks[i] > 0] for i in range(pool.num_adapters)}
    scale = np.zeros(pool.num_adapters, np.float32)
    for m in modules:
        st = pool.modules[m]
        scale = np.where(np.asarray(st.ranks) > 0, np.asarray(st.scale), scale)
    pm = None
    for i, name in enumerate(names):
        r = max(pool.modules[m].ranks[i] for m in targets[i])
        cfg = LoraConfig(r=r, lora_alpha=float(scale[i]) * r, target_modules=targets[i], lora_dropout=0.0,
                         bias="none")
        if pm is None:
            pm = get_peft_model(model, cfg, adapter_name=name)
        else:
            pm.add_adapter(name, cfg)
    pm.base_model.set_adapter(names, inference_mode=True)  # all active, every LoRA weight frozen
    layers = []  # (LoRA layer, its layer index, module index)
    with torch.no_grad():
        for j, m in enumerate(modules):
            st = pool.modules[m]
            a_all, b_all, off = np.asarray(st.a), np.asarray(st.b), st.offsets
            for li, layer in enumerate(pm.base_model.model.model.layers):
                lora = getattr(layer.self_attn if hasattr(layer.self_attn, m) else layer.mlp, m)
                layers.append((lora, li, j))
                for i, name in enumerate(names):
                    if name in lora.lora_A:
                        lora.lora_A[name].weight.copy_(torch.from_numpy(a_all[li, off[i]:off[i + 1]]))
                        lora.lora_B[name].weight.copy_(torch.from_numpy(np.ascontiguousarray(
                            b_all[li, :, off[i]:off[i + 1]])))
    s = torch.from_numpy(scale)

    def set_scaling():
        act = F.leaky_relu(coef.w, 0.01) * s[:, None, None]  # [k, L, M]
        for lora, li, j in layers:
            col = act[:, li, j].unbind()
            for i, name in enumerate(names):
                if name in lora.scaling:
                    lora.scaling[name] = col[i]

    return pm, set_scaling


def _schedule(opt, lr_warm: int, total: int):
    import torch
    return torch.optim.lr_scheduler.LambdaLR(  # optax.warmup_cosine_decay_schedule(0, lr, warm, total, 0)
        opt, lambda s: s / lr_warm if s < lr_warm else 0.5 * (1 + math.cos(
            math.pi * min(s - lr_warm, total - lr_warm) / max(total - lr_warm, 1))))


def sides(hf_config: Mapping, params, config, pool, batch: Mapping[str, np.ndarray], *, lr: float, warm: int,
          total: int, variants=VARIANTS) -> dict[str, Callable[[int], list[float]]]:
    """``{variant: run(n_steps) -> losses}`` for the ``variants`` asked for (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from ..merge.coefficients import module_order
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"torch variants {sorted(unknown)}: expected some of {VARIANTS}")
    modules = module_order(pool)
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
    attn = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    mask = torch.from_numpy(batch["loss_mask"].astype(np.float32))
    idx = torch.from_numpy(batch["answer_index"].astype(np.int64))                  # [B, A]
    rows = torch.arange(len(tokens))[:, None]
    nxt = tokens[rows, torch.clamp(idx + 1, max=tokens.shape[1] - 1)]               # [B, A]
    amask = mask[rows, idx]

    def full_loss(model, decoder):
        logits = model(input_ids=tokens, attention_mask=attn).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
        m = mask[:, :-1].reshape(-1)
        return (nll * m).sum() / m.sum().clamp(min=1)

    def answer_loss(model, decoder):
        h = decoder(input_ids=tokens, attention_mask=attn).last_hidden_state[rows, idx]   # [B, A, D]
        logits = model.lm_head(h).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), nxt.reshape(-1), reduction="none")
        return (nll * amask.reshape(-1)).sum() / amask.sum().clamp(min=1)

    coef = _Coefficients()
    built, out = {}, {}
    for name in variants:
        kind, loss_kind = name.split("-")
        if kind not in built:
            base = hf_model(hf_config, params, config)
            if kind == "concat":
                built[kind] = (_concat_model(base, pool, modules, coef), base.model, lambda: None)
            else:
                pm, set_scaling = _peft_model(base, pool, modules, coef)
                built[kind] = (pm, pm.base_model.model.model, set_scaling)
        model, decoder, before = built[kind]
        loss_of = full_loss if loss_kind == "full" else answer_loss
        w = torch.nn.Parameter(torch.zeros(pool.num_adapters, pool.num_layers, len(modules)))
        opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
        sched = _schedule(opt, warm, total)

        def run(n, model=model, decoder=decoder, before=before, loss_of=loss_of, w=w, opt=opt, sched=sched):
            losses = []
            for _ in range(n):
                coef.w = w
                before()
                loss = loss_of(model, decoder)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            return losses

        out[name] = run
    return out
