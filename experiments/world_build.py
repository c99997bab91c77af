"""The stages of a world build (see ``experiments.world``), each skipped when its output exists.

    tasks   tokenizer + target tasks (JSONL) — seconds
    base    pretraining on the family mixture, saved by transformers — the longest stage
    pool    LoRA chunks (vmapped training), each adapter saved by PEFT's format and checked
    broken  deliberately defective copies of a good adapter
    stats   zero-shot accuracy of the base on every target (default size), then world.json
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from jaxmerge.atomic import write_json, write_jsonl

from . import synthetic
from .world_train import (adapter_norm, hf_config_dict, init_params, peft_tensors, pretrain, save_base, save_peft,
                          save_tokenizer, train_loras)


def target_examples(family: str, n_trainval: int, n_test: int, seed: int) -> tuple[list, list]:
    """(100 train/validation rows, test rows) in phrasing 2; see the world's module docstring."""
    if family in synthetic.KNOWLEDGE:
        keys = synthetic.knowledge_keys(family)
        perm = np.random.default_rng(seed).permutation(len(keys))
        half = len(keys) // 2
        train_keys, test_keys = [keys[i] for i in perm[:half]], [keys[i] for i in perm[half:]]
        return (synthetic.examples(family, n_trainval, seed, (2,), keys=train_keys),
                synthetic.examples(family, n_test, seed + 1, (2,), keys=test_keys))
    trainval = synthetic.examples(family, n_trainval, seed, (2,))
    seen = frozenset(r["prompt"] for r in trainval)
    return trainval, synthetic.examples(family, n_test, seed + 1, (2,), exclude=seen)


def stage_tasks(root: str, rec: dict):
    done = os.path.join(root, "tasks", ".done")
    if os.path.exists(done):
        return
    save_tokenizer(synthetic.vocabulary(), os.path.join(root, "tokenizer"))
    for i, fam in enumerate(rec["targets"]):
        d = os.path.join(root, "tasks", fam)
        os.makedirs(d, exist_ok=True)
        trainval, test = target_examples(fam, 100, rec["n_test"], seed=rec["seed"] * 1000 + 500 + i)
        write_jsonl(os.path.join(d, "train.jsonl"), trainval[:80])
        write_jsonl(os.path.join(d, "validation.jsonl"), trainval[80:])
        write_jsonl(os.path.join(d, "test.jsonl"), test)
        related = fam in rec["pool_families"]
        write_json(os.path.join(d, "task.json"), dict(
            name=fam, source="json:.", prompt="{prompt}", answer="answer", choices="choices", max_new_tokens=4,
            protocol="generate", splits=["train", "validation", "test"], max_test=None, seed=rec["seed"]))
        write_json(os.path.join(d, "about.json"), dict(family=fam, related_in_pool=related, phrasing=2))
    open(done, "w").close()


def _tokenizer(root: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer"))


def stage_base(root: str, rec: dict, progress: bool):
    base = os.path.join(root, "base")
    if os.path.exists(os.path.join(base, "model.safetensors")):
        return
    from jaxmerge.config import LlamaConfig
    from .world_train import encode_chat
    tok = _tokenizer(root)
    kwargs = hf_config_dict(rec["dims"], len(tok), tok)
    config = LlamaConfig.from_dict({**kwargs, "model_type": "llama"})
    p = rec["pretrain"]
    rows = [ex for j, fam in enumerate(rec["pretrain_families"])
            for ex in synthetic.examples(fam, p["examples_per_family"], rec["seed"] * 1000 + 100 + j)]
    data = encode_chat(rows, tok, rec["max_len"])
    t = time.time()
    params, losses = pretrain(init_params(config, rec["seed"]), config, data, p["steps"], p["batch"], p["lr"],
                              rec["seed"], progress)
    tmp = base + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_base(params, kwargs, tmp)
    tok.save_pretrained(tmp)
    write_json(os.path.join(tmp, "pretrain_stats.json"), dict(
        loss_first=float(np.mean(losses[:10])), loss_last=float(np.mean(losses[-10:])), seconds=time.time() - t))
    os.replace(tmp, base)


def rank_buckets(specs: list[dict], chunk: int, split: int = 16) -> list[list[dict]]:
    """Chunks of ≤ ``chunk`` adapters, ranks ≤ ``split`` apart from larger ones (padding a rank-4
    adapter to 64 would do 16× its work), chunk sizes balanced within a bucket to limit compilations."""
    out = []
    for group in ([s for s in specs if s["r"] <= split], [s for s in specs if s["r"] > split]):
        if group:
            n = -(-len(group) // chunk)
            size = -(-len(group) // n)
            out += [group[i:i + size] for i in range(0, len(group), size)]
    return out


def stage_pool(root: str, rec: dict, progress: bool):
    import jaxmerge
    from .world_train import encode_chat
    pool = os.path.join(root, "pool")
    os.makedirs(pool, exist_ok=True)
    specs = rec["pool"]["specs"]
    todo = [s for s in specs if not os.path.exists(os.path.join(pool, s["name"], "adapter_model.safetensors"))]
    if not todo:
        return
    base = jaxmerge.load_base(os.path.join(root, "base"), dtype="float32")  # through the real loader
    tok, cfg, P = base.tokenizer, base.config, rec["pool"]
    chunks = rank_buckets(todo, P["chunk"])
    for k, chunk in enumerate(chunks):
        rank = max(s["r"] for s in chunk)  # each chunk is padded to its own largest rank
        data = [encode_chat(synthetic.examples(s["family"], P["examples"], s["seed"]), tok, rec["max_len"])
                for s in chunk]
        t = time.time()
        loras, tail = train_loras(base.params, cfg, chunk, data, P["steps"], P["batch"], P["lr"], rank,
                                  seed=chunk[0]["seed"], progress=progress,
                                  desc=f"LoRA chunk {k + 1}/{len(chunks)} ({len(chunk)} adapters, rank ≤ {rank})")
        a = {m: v[0] for m, v in loras.items()}
        b = {m: v[1] for m, v in loras.items()}
        for i, s in enumerate(chunk):
            tensors = peft_tensors(s, a, b, i, cfg)
            norm = adapter_norm(s, tensors)
            tmp = os.path.join(pool, s["name"] + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_peft(tmp, s, tensors, base.path)
            write_json(os.path.join(tmp, "train_stats.json"), dict(
                final_loss=float(tail[i]), norm=norm, seconds=(time.time() - t) / len(chunk), family=s["family"]))
            shutil.rmtree(os.path.join(pool, s["name"]), ignore_errors=True)
            os.replace(tmp, os.path.join(pool, s["name"]))


def stage_broken(root: str, rec: dict):
    """Copies of the first good adapter, each with one defect the pool filter must catch."""
    from safetensors.numpy import load_file
    pool = os.path.join(root, "pool")
    spec = rec["pool"]["specs"][0]
    src = load_file(os.path.join(pool, spec["name"], "adapter_model.safetensors"))
    base_path = os.path.join(root, "base")
    norm = adapter_norm(spec, src)
    first_a = sorted(k for k in src if k.endswith("lora_A.weight"))[0]

    def scaled(factor):
        return {k: v * np.float32(factor) if "lora_B" in k else v for k, v in src.items()}

    for defect in rec["broken"]:
        d = os.path.join(pool, f"broken-{defect}")
        if os.path.exists(os.path.join(d, "adapter_config.json")):
            continue
        tmp = d + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t, extra = dict(src), {}
        if defect == "nan":
            t[first_a] = t[first_a].copy()
            t[first_a][0, 0] = np.nan
        elif defect == "shape":  # input width one larger than the base's
            t[first_a] = np.concatenate([t[first_a], t[first_a][:, :1]], axis=1)
        elif defect == "tiny":  # ‖ΔW‖ = 0.01 ≤ 1
            t = scaled(0.01 / norm)
        elif defect == "huge":  # ‖ΔW‖ = 1e6 > 1000 (every single matrix too, in practice)
            t = scaled(1e6 / norm)
        elif defect == "dora":
            extra = dict(use_dora=True)
            for k in [k for k in src if k.endswith("lora_B.weight")]:
                t[k.replace("lora_B.weight", "lora_magnitude_vector")] = np.ones(src[k].shape[0], np.float32)
        elif defect == "rank_pattern":
            extra = dict(rank_pattern={spec["targets"][0]: spec["r"]})
        if defect == "bin":  # pickle weights only (as old PEFT wrote them); jaxmerge never reads it
            import pickle
            save_peft(tmp, spec, {}, base_path)
            with open(os.path.join(tmp, "adapter_model.bin"), "wb") as f:
                pickle.dump(src, f)
        else:
            save_peft(tmp, spec, t, base_path, **extra)
        os.replace(tmp, d)


def stage_stats(root: str, rec: dict) -> dict:
    """Zero-shot test accuracy of the base on every target, both protocols (default size only)."""
    stats = {}
    with open(os.path.join(root, "base", "pretrain_stats.json")) as f:
        stats["pretrain"] = json.load(f)
    stats["pool"] = {}
    for s in rec["pool"]["specs"]:
        with open(os.path.join(root, "pool", s["name"], "train_stats.json")) as f:
            stats["pool"][s["name"]] = json.load(f)
    if rec["size"] != "default":
        return stats
    import jaxmerge
    from jaxmerge.tasks import evaluate_generate, evaluate_loglik, load_task
    base = jaxmerge.load_base(os.path.join(root, "base"), dtype="float32")
    stats["zero_shot"] = {}
    for fam in rec["targets"]:
        test = load_task(os.path.join(root, "tasks", fam)).test
        stats["zero_shot"][fam] = dict(
            generate=evaluate_generate(base.params, base.config, base.tokenizer, test, batch_size=50, max_new_tokens=4),
            loglik=evaluate_loglik(base.params, base.config, base.tokenizer, test, batch_size=100),
            chance_loglik=float(np.mean([1 / len(r["choices"]) for r in test])))
    return stats


def build_stages(root: str, rec: dict, progress: bool = True):
    write_json(os.path.join(root, "recipe.json"), rec)
    t0 = time.time()
    stage_tasks(root, rec)
    stage_base(root, rec, progress)
    stage_pool(root, rec, progress)
    stage_broken(root, rec)
    stats = stage_stats(root, rec)
    stats["build_seconds_last_run"] = time.time() - t0
    specs = rec["pool"]["specs"]
    good = [f"pool/{s['name']}" for s in specs]
    broken = {f"pool/broken-{k}": v for k, v in rec["broken"].items()}
    write_json(os.path.join(root, "world.json"), dict(
        base_dir="base", pool_dirs=good + list(broken), broken=broken,
        tasks={fam: f"tasks/{fam}" for fam in rec["targets"]}, default_task=rec["default_task"],
        target_tasks=list(rec["targets"]),
        related={fam: [s["name"] for s in specs if s["family"] == fam] for fam in rec["targets"]},
        adapters={s["name"]: s for s in specs}, stats=stats))
