"""Training and saving for the embedded world: tokenizer, base pretraining, the pool's LoRAs.

Everything is written in the ecosystem's formats and read back through the real loaders:

* tokenizer — a ``tokenizers`` word-level model with a chat template, wrapped in
  ``PreTrainedTokenizerFast`` and written by ``save_pretrained`` (loaded with ``AutoTokenizer``);
* base — trained as a jaxmerge params tree and written as transformers' ``save_pretrained`` writes a
  ``LlamaForCausalLM`` (config.json, generation_config.json, model.safetensors; ``jaxmerge.hf_write``);
* LoRAs — ``adapter_config.json`` and ``adapter_model.safetensors`` exactly as PEFT writes them
  (``jaxmerge.pool.peft_write``: PEFT's config keys, ``base_model.model.model.layers.{i}.{group}.{module}
  .lora_A.weight`` [r, in], ``.lora_B.weight`` [out, r]).

No torch and no peft at run time: both are test oracles (tests load these files with transformers and
PEFT and compare logits).

The pool's LoRAs train together: every adapter padded to the largest rank on all seven modules, with a
per-row multiplier that is s = alpha/r (or alpha/√r) on its real rows, modules and layers and 0
elsewhere. Rows with multiplier 0 get exactly zero gradient, so under Adam without weight decay they
stay at their initial value and are dropped when saving; the vmapped step is therefore N independent
trainings in one compiled program.

Einsum-free; shapes: N adapters, L layers, R padded rank, M = 7 modules.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmerge.config import MODULES, LlamaConfig
from jaxmerge.lora import Factored
from jaxmerge.pool.peft_write import lora_config, lora_key, write_adapter
from jaxmerge.progress import track
from jaxmerge.tasks import answer_loss, encode

SPECIALS = ["<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|eot|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|eot|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


# --- tokenizer ---------------------------------------------------------------------------------------
def save_tokenizer(words: Sequence[str], path: str):
    """Word-level tokenizer (whitespace split) with Llama-like special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIALS + list(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                  pad_token="<|pad|>", unk_token="<|unk|>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return tok


def hf_config_dict(dims: dict, vocab_size: int, tok) -> dict:
    """transformers ``LlamaConfig`` kwargs: Llama 3.1 features (GQA, llama3 rope, untied embeddings)."""
    return dict(vocab_size=vocab_size, hidden_size=dims["hidden"], intermediate_size=dims["ffn"],
                num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                num_key_value_heads=dims["kv_heads"], head_dim=dims["hidden"] // dims["heads"],
                rms_norm_eps=1e-5, max_position_embeddings=256, rope_theta=500000.0,
                rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=32),
                tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, hidden_act="silu", attention_bias=False, mlp_bias=False)


# --- base --------------------------------------------------------------------------------------------
def init_params(config: LlamaConfig, seed: int) -> dict:
    """Normal(0, 0.02) projections and embeddings, unit norms (transformers' Llama init)."""
    from jaxmerge.params import abstract_params
    abstract = abstract_params(config, jnp.float32)
    leaves, treedef = jax.tree.flatten_with_path(abstract)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = str(path[-1])
        out.append(jnp.ones(leaf.shape, jnp.float32) if "norm" in name or "layernorm" in name
                   else 0.02 * jax.random.normal(k, leaf.shape, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def _schedule(lr: float, steps: int):
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), max(2, steps), lr * 0.1)


def pretrain(params: dict, config: LlamaConfig, data: dict[str, np.ndarray], steps: int, batch: int, lr: float,
             seed: int, progress: bool = True) -> tuple[dict, list[float]]:
    """AdamW on the answer-token loss of the chat-formatted mixture ``data`` (encode's output)."""
    opt = optax.adamw(_schedule(lr, steps), weight_decay=0.01)
    state = opt.init(params)

    @jax.jit
    def step(params, state, b):
        loss, g = jax.value_and_grad(lambda p: answer_loss(p, config, b))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    rng = np.random.default_rng(seed)
    n = data["tokens"].shape[0]
    losses = []
    for _ in track(range(steps), desc="pretrain base", enabled=progress):
        idx = rng.integers(0, n, size=batch)
        params, state, loss = step(params, state, {k: v[idx] for k, v in data.items()})
        losses.append(loss)
    return params, [float(x) for x in jax.device_get(losses)]


def save_base(params: dict, config_kwargs: dict, path: str):
    """Write the params as transformers' ``LlamaForCausalLM.save_pretrained`` would (no torch needed:
    ``jaxmerge.hf_write``); ``path`` is the (partial) folder being filled."""
    from jaxmerge.hf_write import write_model_files
    from jaxmerge.params import params_to_hf
    from jaxmerge.config import LlamaConfig as JConfig
    config = {**config_kwargs, "model_type": "llama"}
    tensors = {k: np.asarray(v, np.float32) for k, v in params_to_hf(params, JConfig.from_dict(config)).items()}
    os.makedirs(path, exist_ok=True)
    write_model_files(path, config, tensors)


# --- pool LoRAs ----------------------------------------------------------------------------------------
def lora_scale(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def row_multiplier(specs: Sequence[dict], config: LlamaConfig, rank: int) -> dict[str, np.ndarray]:
    """``{module: [N, L, R]}``: s_i on adapter i's real rows in its targeted modules and layers, else 0."""
    L = config.num_hidden_layers
    out = {m: np.zeros((len(specs), L, rank), np.float32) for m in MODULES}
    for i, s in enumerate(specs):
        layers = s.get("layers") or list(range(L))
        for m in s["targets"]:
            out[m][i, layers, :s["r"]] = lora_scale(s["r"], s["alpha"], s["rslora"])
    return out


def init_loras(specs: Sequence[dict], config: LlamaConfig, rank: int, seed: int) -> dict:
    """PEFT's init: A ~ U(-1/√in, 1/√in) (kaiming-uniform with a=√5), B = 0. ``{module: (a, b)}`` with
    a ``[N, L, R, in]``, b ``[N, L, out, R]``."""
    n, L = len(specs), config.num_hidden_layers
    key = jax.random.key(seed)
    out = {}
    for j, m in enumerate(MODULES):
        o, i = config.module_shape(m)
        bound = 1.0 / math.sqrt(i)
        a = jax.random.uniform(jax.random.fold_in(key, j), (n, L, rank, i), jnp.float32, -bound, bound)
        out[m] = (a, jnp.zeros((n, L, o, rank), jnp.float32))
    return out


def train_loras(params: dict, config: LlamaConfig, specs: Sequence[dict], data: Sequence[dict[str, np.ndarray]],
                steps: int, batch: int, lr: float, rank: int, seed: int, progress: bool = True,
                desc: str = "train LoRAs") -> tuple[dict, np.ndarray]:
    """Train one LoRA per spec on its own data (vmapped over adapters). Returns ``{module: (a, b)}`` as
    NumPy and the last 10 steps' mean loss per adapter ``[N]``."""
    mult = {m: jnp.asarray(v) for m, v in row_multiplier(specs, config, rank).items()}
    loras = init_loras(specs, config, rank, seed)
    opt = optax.adam(_schedule(lr, steps))
    state = opt.init(loras)

    def one(lora, mul, b):
        adapters = {m: Factored(lora[m][0], lora[m][1], mul[m]) for m in MODULES}
        return answer_loss(params, config, b, adapters)

    @jax.jit
    def step(loras, state, b):
        def total(l):
            losses = jax.vmap(one)(l, mult, b)
            return jnp.sum(losses), losses
        (_, losses), g = jax.value_and_grad(total, has_aux=True)(loras)
        upd, state = opt.update(g, state, loras)
        return optax.apply_updates(loras, upd), state, losses

    rng = np.random.default_rng(seed)
    history = []
    for _ in track(range(steps), desc=desc, enabled=progress):
        idx = [rng.integers(0, d["tokens"].shape[0], size=batch) for d in data]
        b = {k: np.stack([d[k][ix] for d, ix in zip(data, idx)]) for k in data[0]}
        loras, state, losses = step(loras, state, b)
        history.append(losses)
    tail = np.mean(np.asarray(jax.device_get(history[-10:])), axis=0)
    return {m: (np.asarray(a), np.asarray(b)) for m, (a, b) in loras.items()}, tail


def peft_tensors(spec: dict, a: dict, b: dict, index: int, config: LlamaConfig) -> dict[str, np.ndarray]:
    """PEFT's state dict of adapter ``index`` (its real rows, modules and layers only)."""
    out = {}
    layers = spec.get("layers") or range(config.num_hidden_layers)
    for m in spec["targets"]:
        for layer in layers:
            out[lora_key(layer, m, "A")] = np.ascontiguousarray(a[m][index, layer, :spec["r"]])
            out[lora_key(layer, m, "B")] = np.ascontiguousarray(b[m][index, layer, :, :spec["r"]])
    return out


def save_peft(path: str, spec: dict, tensors: dict[str, np.ndarray], base_path: str, **config_overrides):
    """An adapter folder exactly as PEFT writes it (``jaxmerge.pool.peft_write``; no peft needed)."""
    cfg = lora_config(spec["r"], spec["alpha"], spec["targets"], use_rslora=spec["rslora"],
                      layers_to_transform=spec.get("layers"), base_model_name_or_path=base_path, **config_overrides)
    write_adapter(path, cfg, tensors)


def adapter_norm(spec: dict, tensors: dict[str, np.ndarray]) -> float:
    """‖Σ s·B·A‖ over the whole adapter: sqrt of the summed squared Frobenius norms of every ΔW."""
    s = lora_scale(spec["r"], spec["alpha"], spec["rslora"])
    total = 0.0
    for k, a in tensors.items():
        if k.endswith("lora_A.weight"):
            d = s * tensors[k.replace("lora_A", "lora_B")].astype(np.float64) @ a.astype(np.float64)
            total += float(np.sum(d * d))
    return math.sqrt(total)


def encode_chat(examples, tok, max_len: int) -> dict[str, np.ndarray]:
    return encode(examples, tok, max_len, with_answer=True)
