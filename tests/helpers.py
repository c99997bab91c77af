"""Helpers shared by the tests (import as ``from helpers import …``; tests/ is on sys.path under pytest,
and conftest puts it on PYTHONPATH for the tests' subprocesses): tiny real Llamas written by
transformers' ``save_pretrained``, PEFT adapters written by peft itself, a tiny end-to-end adaptive setup
and a tiny multi-LoRA world. Everything is offline and random-initialised from a seed."""

from __future__ import annotations

import copy
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge.config import ATTN_MODULES, MODULES, LlamaConfig, RopeConfig
from jaxmerge.lora import Factored
from jaxmerge.params import abstract_params
from jaxmerge.safetensors_io import SafeFile, save
from jaxmerge.stacks import ModuleStack, Pool


def mesh_env(devices: int = 8) -> dict:
    """``os.environ`` for a subprocess on ``devices`` simulated CPU devices: ``JAX_PLATFORMS=cpu`` and
    XLA_FLAGS appended to, not replaced, so the suite's compile flags and cache carry over."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
            max_position_embeddings=256, rope_theta=10000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=16),
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_llama(path, seed=0, dtype=None, **overrides):
    """Save a random transformers LlamaForCausalLM with TINY (+ overrides) to ``path``; return the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(TINY)
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so that norm weights are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model


def write_adapter(model, path, *, seed=0, dtype=None, bare=False, scale_b=0.5, **lora_kw):
    """Save a peft LoRA of ``model`` (a transformers LlamaForCausalLM) with perturbed A and B to ``path``;
    return PEFT's own deltas ``{(module, layer): get_delta_weight float32 [out, in]}``."""
    import torch
    from peft import LoraConfig, get_peft_model

    kw = dict(task_type=None if bare else "CAUSAL_LM", r=4, lora_alpha=8,
              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    kw.update(lora_kw)
    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(model.model if bare else model), LoraConfig(**kw))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(scale_b * torch.randn_like(p))
    if dtype is not None:
        pm = pm.to(dtype)
    pm.save_pretrained(path)
    pm = pm.float()  # oracle deltas from the (possibly fp16-rounded) saved values, in float32
    deltas = {}
    for n, mod in pm.named_modules():
        if hasattr(mod, "get_delta_weight") and "default" in getattr(mod, "lora_A", {}):
            m = re.search(r"layers\.(\d+)\.\w+\.(\w+_proj)$", n)
            if m is None:  # a LoRA outside the layers (lm_head): not merged
                continue
            with torch.no_grad():
                deltas[(m[2], int(m[1]))] = mod.get_delta_weight("default").float().numpy()
    return deltas


def rewrite_keys(path, fn):
    """Rename every tensor of an adapter's safetensors (key variants seen on the hub)."""
    f = os.path.join(path, "adapter_model.safetensors")
    tensors = {fn(k): np.array(v) for k, v in ((k, SafeFile(f)[k]) for k in SafeFile(f).keys())}
    save(f, tensors)


def edit_config(path, **changes):
    p = os.path.join(path, "adapter_config.json")
    with open(p) as fh:
        cfg = json.load(fh)
    cfg.update(changes)
    with open(p, "w") as fh:
        json.dump(cfg, fh)


def peft_factored(adapter_dir: str, config) -> dict:
    """A PEFT adapter folder → the forward's ``{module: Factored}`` (independent of jaxmerge's pool
    loader: read straight from ``adapter_config.json`` and the safetensors keys)."""
    from safetensors.numpy import load_file
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    t = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    L = config.num_hidden_layers
    out = {}
    for m in cfg["target_modules"]:
        group = "self_attn" if m in ATTN_MODULES else "mlp"
        o, i = config.module_shape(m)
        a, b, mul = np.zeros((L, r, i), np.float32), np.zeros((L, o, r), np.float32), np.zeros((L, r), np.float32)
        for layer in cfg.get("layers_to_transform") or range(L):
            key = f"base_model.model.model.layers.{layer}.{group}.{m}"
            a[layer], b[layer], mul[layer] = t[f"{key}.lora_A.weight"], t[f"{key}.lora_B.weight"], s
        out[m] = Factored(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mul))
    return out


WORDS = ["what", "is", "plus", "?"] + [str(i) for i in range(20)]


SPECIALS = ["<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|eot|>", "<|user|>", "<|assistant|>", "<|system|>"]


TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|eot|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


POOL_SPEC = [  # (rank, alpha, modules, layers)
    (2, 4.0, ("q_proj", "v_proj"), (0, 1)), (4, 8.0, None, (0, 1)), (8, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj"), (0, 1)),
    (3, 6.0, None, (1,)), (4, 4.0, ("q_proj", "v_proj", "down_proj"), (0, 1)), (2, 2.0, None, (0, 1))]


def save_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot|>",
                                  pad_token="<|pad|>", unk_token="<|unk|>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)


def make_pool(config, seed=0) -> Pool:
    """6 random LoRAs, mixed ranks and module sets (one lacks layer 0), B non-zero."""
    rng = np.random.default_rng(seed)
    L = config.num_hidden_layers
    mods = {}
    for m in MODULES:
        out, inp = config.module_shape(m)
        a_parts, b_parts, ranks, present = [], [], [], []
        for r, _, targets, layers in POOL_SPEC:
            has = targets is None or m in targets
            rr = r if has else 0
            a = rng.normal(0, 0.3, (L, rr, inp)).astype(np.float32)
            b = rng.normal(0, 0.3, (L, out, rr)).astype(np.float32)
            lay = np.isin(np.arange(L), layers) & has
            a_parts.append(a * lay[:, None, None]), b_parts.append(b * lay[:, None, None])
            ranks.append(rr), present.append(lay)
        mods[m] = ModuleStack(jnp.asarray(np.concatenate(a_parts, 1)), jnp.asarray(np.concatenate(b_parts, 2)),
                              jnp.asarray([al / r for r, al, _, _ in POOL_SPEC], jnp.float32),
                              jnp.asarray(np.stack(present)), tuple(ranks))
    return Pool(mods, tuple(f"lora{i}" for i in range(len(POOL_SPEC))))


def examples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 10, 2)
        out.append({"prompt": f"what is {a} plus {b} ?", "answer": str(a + b), "choices": None})
    return out


def make_setup(root: str):
    """(Base, Pool, TaskData) from ``root`` (written on first call)."""
    import jaxmerge
    from jaxmerge.tasks import Task, TaskData
    base_dir = os.path.join(root, "base")
    if not os.path.exists(os.path.join(base_dir, "tokenizer_config.json")):
        hf_llama(base_dir, vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=2, eos_token_id=3, pad_token_id=0)
        save_tokenizer(base_dir)
    base = jaxmerge.load_base(base_dir, dtype="float32")
    task = Task(name="toy-add", source="json:unused", max_new_tokens=3)
    data = TaskData(task, examples(16, 1), examples(8, 2), examples(8, 3))
    return base, make_pool(base.config), data


MW_WORDS = [f"w{i}" for i in range(40)]

MW_SPECIALS = ["<|pad|>", "<|unk|>", "<|bos|>", "<|eot|>", "<|user|>", "<|assistant|>"]

MW_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|eot|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")

def multi_lora_world():
    """(tokenizer, config, params, pool, examples): a tiny random Llama and 7 mixed-rank adapters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(MW_SPECIALS + MW_WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eot|>", pad_token="<|pad|>",
                                  unk_token="<|unk|>", additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = MW_TEMPLATE
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope=RopeConfig(10000.0),
                         bos_token_id=tok.bos_token_id, eos_token_id=(tok.eos_token_id,), pad_token_id=tok.pad_token_id)
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(  # unit norms, N(0, 0.3²) weights: diverse greedy outputs
        lambda path, l: jnp.ones(l.shape, jnp.float32) if "norm" in jax.tree_util.keystr(path)
        else jnp.asarray(rng.normal(0, 0.3, l.shape), jnp.float32), abstract_params(config, jnp.float32))
    # 7 adapters, mixed ranks; 2 lacks the MLP, 4 is zero (B = 0), 6 lacks layer 0
    ranks = (2, 4, 1, 2, 4, 2, 4)  # few distinct shapes: the one-at-a-time oracle compiles per shape
    modules = {}
    for m in ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
        o, d = config.module_shape(m)
        rk = tuple(0 if (i == 2 and m in ("up_proj", "down_proj")) else r for i, r in enumerate(ranks))
        a = [rng.normal(0, 0.5, (2, r, d)) for r in rk]
        b = [rng.normal(0, 0.5, (2, o, r)) * (i != 4) for i, r in enumerate(rk)]
        a[6][0], b[6][0] = 0, 0
        present = np.ones((7, 2), bool)
        present[6, 0] = False
        modules[m] = ModuleStack(jnp.asarray(np.concatenate(a, 1), jnp.float32),
                                 jnp.asarray(np.concatenate(b, 2), jnp.float32),
                                 jnp.asarray(rng.uniform(0.5, 2, 7), jnp.float32), jnp.asarray(present), rk)
    pool = Pool(modules, tuple(f"a{i}" for i in range(7)))
    prompts = [" ".join(rng.choice(MW_WORDS, size=n)) for n in (3, 5, 2, 6, 4)]
    examples = [dict(prompt=p, answer=" ".join(rng.choice(MW_WORDS, size=2))) for p in prompts]
    return tok, config, params, pool, examples
