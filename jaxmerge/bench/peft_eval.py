"""Evaluation-based selection the way the authors run it: transformers + PEFT, one adapter at a time.

For every pool adapter: ``PeftModel.from_pretrained(base, folder)`` (PEFT reads the adapter from disk
and injects its LoRA layers), evaluate it on the target examples, ``unload()`` (the base is restored
for the next one). Two scores, on exactly the token rows jaxmerge uses (``jaxmerge.tasks.encode``):

* ``losses`` — mean answer-token cross-entropy over all examples (rows right-padded per batch of
  ``batch_size``, full logits as a transformers user computes them);
* ``answers`` — greedy generation (``model.generate``, ``do_sample=False``, the given end ids) of the
  left-padded chat prompts, cut at the first end token, special tokens removed.

The base is transformers' ``AutoModelForCausalLM`` in float32 with SDPA attention.
Shapes: n examples, T tokens, V vocabulary.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from ..progress import track


def load_base(base_dir: str):
    """The base in float32 with plain greedy decoding (a fresh ``GenerationConfig``: the folder's own sampling
    or repetition settings would otherwise fill in whatever ``generate`` is not told)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    model.generation_config = GenerationConfig()
    return model


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def _nll_sum(model, tokens: np.ndarray, attention_mask: np.ndarray, loss_mask: np.ndarray) -> float:
    import torch
    import torch.nn.functional as F
    keep = int(attention_mask.sum(1).max())  # this batch's longest row (right padding)
    tok = torch.from_numpy(tokens[:, :keep].astype(np.int64))
    logits = model(input_ids=tok, attention_mask=torch.from_numpy(attention_mask[:, :keep].astype(np.int64))).logits
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1), reduction="none")
    return float((nll * torch.from_numpy(loss_mask[:, :keep - 1].astype(np.float32)).reshape(-1)).sum())


def one_at_a_time(model, adapter_dirs: Sequence[str], *, batch: Mapping[str, np.ndarray] | None = None,
                  prompts: Mapping[str, np.ndarray] | None = None, tokenizer=None, ends: tuple[int, ...] = (),
                  pad: int = 0, max_new_tokens: int = 30, batch_size: int = 20, progress: bool = True) -> dict:
    """Load, evaluate and unload each adapter in turn. ``batch``: ``encode(..., with_answer=True)`` rows
    (losses); ``prompts``: ``encode(..., with_answer=False)`` rows (answers, decoded with ``tokenizer``).
    Returns ``{"losses": [n_adapters] | None, "answers": [n_adapters][n] | None, "load_s", "eval_s"}``
    and the base model restored (``"model"``)."""
    import torch
    from peft import PeftModel

    from ..adaptive.multi_eval import _decode
    losses, answers, load_s, eval_s = [], [], 0.0, 0.0
    count = float(np.asarray(batch["loss_mask"]).sum()) if batch is not None else 0.0
    kind = "loss" if batch is not None else "generate"
    with torch.inference_mode():
        for folder in track(adapter_dirs, desc=f"transformers+PEFT ({kind})", unit="adapter", enabled=progress):
            t = time.perf_counter()
            pm = PeftModel.from_pretrained(model, folder, adapter_name="candidate", is_trainable=False).eval()
            load_s += time.perf_counter() - t
            t = time.perf_counter()
            if batch is not None:
                total = sum(_nll_sum(pm, *(np.asarray(batch[k])[lo:hi] for k in ("tokens", "attention_mask",
                                                                                   "loss_mask")))
                            for lo, hi in _batches(len(batch["tokens"]), batch_size))
                losses.append(total / count)
            if prompts is not None:
                rows = []
                for lo, hi in _batches(len(prompts["tokens"]), batch_size):
                    tok = torch.from_numpy(np.asarray(prompts["tokens"][lo:hi], np.int64))
                    am = torch.from_numpy(np.asarray(prompts["attention_mask"][lo:hi], np.int64))
                    out = pm.generate(input_ids=tok, attention_mask=am, max_new_tokens=max_new_tokens, do_sample=False,
                                      num_beams=1, eos_token_id=list(ends), pad_token_id=pad)
                    rows += [_decode(tokenizer, r, ends) for r in out[:, tok.shape[1]:].numpy()]
                answers.append(rows)
            eval_s += time.perf_counter() - t
            t = time.perf_counter()
            model = pm.unload()  # the LoRA layers removed: the base again
            load_s += time.perf_counter() - t
    return {"losses": np.asarray(losses) if batch is not None else None,
            "answers": answers if prompts is not None else None,
            "load_s": load_s, "eval_s": eval_s, "model": model}
