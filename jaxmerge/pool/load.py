"""``load_pool``: hundreds of PEFT adapters → one ``jaxmerge.stacks.Pool`` of device arrays + a report.

Two passes, so no adapter is ever held twice in host memory:

1. ``inspect_adapter`` (threads, one adapter at a time each): config, key and shape checks, then each
   (A, B) pair is read from the memory-mapped file once for the finite check, the norm and the
   content digest; only this metadata is kept. A bad adapter becomes a report row, never an
   exception that ends the load.
2. the stacks are built by ``jax.make_array_from_callback``: each device's shard is filled straight
   from the memory maps of the kept files (on a mesh, a device reads only its slice of ``in`` / ``out``).

Layout (``jaxmerge.stacks``): per module type, ranks concatenated; adapter i owns rows
``offsets[i]:offsets[i+1]``. Under ``rank_pattern`` an adapter's rank may differ across layers; its
block then has the largest, zero-filled below. Per-layer scales (``alpha_pattern``) are folded into
B as s_l / s so that ``scale[i]`` stays one number per adapter and module.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from ..atomic import write_text
from ..config import MODULES, ModelConfig
from ..models.schema import module_name
from ..progress import track
from ..safetensors_io import SafeFile, SafetensorsError
from ..sharding import ShardingRules
from ..stacks import ModuleStack, Pool, owner_of, stack_logical_axes
from .filters import FilterPolicy, check_config, check_license, check_norm
from .peft_format import AdapterConfig, AdapterError, parse_key
from .sources import Source, expand_sources, resolve

WEIGHTS = "adapter_model.safetensors"


@dataclasses.dataclass
class Report:
    """One row per source: ``{"source", "kept", "reason"}`` (kept rows: "ok" plus any notes)."""
    rows: list[dict]

    @property
    def kept(self) -> list[str]:
        return [r["source"] for r in self.rows if r["kept"]]

    def to_json(self) -> str:
        return json.dumps({"adapters": self.rows}, indent=1)

    def save(self, path: str) -> None:
        write_text(path, self.to_json())

    def summary(self) -> str:
        kept = len(self.kept)
        lines = [f"{kept} of {len(self.rows)} adapters kept"]
        reasons: dict[str, int] = {}
        for r in self.rows:
            if not r["kept"]:
                key = r["reason"].split(":")[0] if "duplicate" in r["reason"] else r["reason"]
                reasons[key] = reasons.get(key, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda x: -x[1]):
            lines.append(f"  skipped {n:4d}  {why}")
        return "\n".join(lines)


@dataclasses.dataclass
class AdapterInfo:
    """What pass 1 keeps of one adapter: where its tensors are, never the tensors."""
    source: str
    file: str
    layers: dict[str, dict[int, tuple[str, str, int, float]]]  # module → layer → (key A, key B, r, scale)
    norm: float
    digest: str
    notes: list[str]

    def rank(self, module: str) -> int:
        return max((v[2] for v in self.layers.get(module, {}).values()), default=0)

    def scale(self, module: str) -> float:
        per = self.layers.get(module)
        return next(iter(per.values()))[3] if per else 0.0


def inspect_adapter(folder: str, base: ModelConfig, policy: FilterPolicy, *, source: str | None = None,
                    from_hub: bool = False, expected=None) -> AdapterInfo:
    """Check one adapter folder; raises ``AdapterError(reason)`` when it is skipped. ``expected``: the
    ``manifest.Entry`` recorded for it — a config that disagrees is skipped, naming the difference."""
    source = source or folder
    cfg_path, weights = os.path.join(folder, "adapter_config.json"), os.path.join(folder, WEIGHTS)
    if not os.path.exists(weights):
        if os.path.exists(os.path.join(folder, "adapter_model.bin")):
            raise AdapterError("only adapter_model.bin (pickle): never unpickled; convert it to safetensors")
        raise AdapterError(f"no {WEIGHTS}")
    if not os.path.exists(cfg_path):
        raise AdapterError("no adapter_config.json")
    try:
        with open(cfg_path) as f:
            cfg = AdapterConfig.from_dict(json.load(f))
    except ValueError as e:
        raise AdapterError(f"unreadable adapter_config.json: {e}") from None
    if expected is not None and expected.mismatch(cfg):
        raise AdapterError(f"config disagrees with the manifest: {expected.mismatch(cfg)}")
    for reason in (check_config(cfg, policy), check_license(folder, from_hub, policy)):
        if reason:
            raise AdapterError(reason)
    try:
        f = SafeFile(weights)
    except (SafetensorsError, OSError) as e:
        raise AdapterError(f"unreadable safetensors: {e}") from None

    pairs: dict[tuple[str, int], dict[str, str]] = {}
    notes: set[str] = set()
    bare = set()
    for key in f.keys():
        k = parse_key(key)
        if k.kind == "lora":
            pairs.setdefault((k.module, k.layer), {})[k.part] = key
            bare.add(k.bare)
        elif k.kind == "other_lora":
            notes.add(f"ignored LoRA on {k.target} (only keys under .layers. are merged)")
        elif k.kind == "dora":
            raise AdapterError("DoRA weights (lora_magnitude_vector) in the file")
        elif k.kind == "bias":
            raise AdapterError(f"bias tensor {key!r}")
        elif k.kind == "full":  # PEFT's save_embedding_layers: a copy of the base's, unless the vocab was resized
            if f.shape(key) != (base.vocab_size, base.hidden_size):
                raise AdapterError(f"full tensor {key!r} of shape {f.shape(key)}: vocabulary resized "
                                   f"(base has {base.vocab_size})")
            notes.add("ignored full embedding/lm_head tensors of the base's shape (not merged)")
        elif k.kind in ("modules_to_save", "trainable_tokens"):
            allowed = {"modules_to_save": policy.allow_modules_to_save,
                       "trainable_tokens": policy.allow_trainable_tokens}[k.kind]
            if not allowed:
                raise AdapterError(f"{k.kind} tensor {key!r}")
            notes.add(f"ignored {k.kind} tensors")
        elif k.kind == "unknown_module":
            raise AdapterError(f"LoRA on a module the base lacks: {k.target!r}")
        else:
            raise AdapterError(f"unrecognised tensor {key!r}")
    if not pairs:
        raise AdapterError("no LoRA weights under .layers. for the base's projections")
    if len(bare) > 1:
        raise AdapterError("keys mix bare-LlamaModel and LlamaForCausalLM prefixes")
    bare_model = bare.pop()

    L = base.num_hidden_layers
    layers: dict[str, dict[int, tuple]] = {}
    problems, untargeted = [], set()
    for (module, layer), parts in sorted(pairs.items(), key=lambda x: (MODULES.index(x[0][0]), x[0][1])):
        name = module_name(layer, module, bare_model)
        if set(parts) != {"A", "B"}:
            problems.append(f"{name}: lora_{'AB'.replace(''.join(parts), '')} missing")
            continue
        if layer >= L:
            problems.append(f"{name}: layer {layer} but the base has {L} layers")
            continue
        if not cfg.targets(name):
            untargeted.add(module)  # PEFT would not load it either
            continue
        r, _ = cfg.rank_alpha(name)
        out_dim, in_dim = base.module_shape(module)
        sa, sb = f.shape(parts["A"]), f.shape(parts["B"])
        if sa != (r, in_dim) or sb != (out_dim, r):
            problems.append(f"{name}: A {sa} B {sb}, expected A {(r, in_dim)} B {(out_dim, r)}")
            continue
        layers.setdefault(module, {})[layer] = (parts["A"], parts["B"], r, cfg.scale(name))
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AdapterError(f"shape mismatch with the base: {problems[0]}{more}")
    if untargeted:
        notes.add(f"ignored weights of {sorted(untargeted)} that the config does not target (as PEFT does)")
    if not layers:
        raise AdapterError("no weights for the modules its config targets")

    digest, sq = hashlib.sha256(), 0.0
    for module, per in layers.items():
        for layer, (ka, kb, r, s) in per.items():
            a = np.asarray(f[ka], np.float32)
            b = np.asarray(f[kb], np.float32)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise AdapterError(f"non-finite values (NaN/Inf) in {module_name(layer, module, bare_model)}")
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            sq += s * s * float(np.sum((b64.T @ b64) * (a64 @ a64.T)))   # ‖s·B·A‖²_F = s²·tr(BᵀB·AAᵀ)
            digest.update(f"{module}.{layer}.{s:.9g}".encode())
            digest.update(a.tobytes())
            digest.update(b.tobytes())
    norm = float(np.sqrt(max(sq, 0.0)))
    reason = check_norm(norm, policy)
    if reason:
        raise AdapterError(reason)
    return AdapterInfo(source, weights, layers, norm, digest.hexdigest(), sorted(notes))


def _inspect(src: Source, base, policy, cache_dir):
    try:
        folder = resolve(src, cache_dir)
        return inspect_adapter(folder, base, policy, source=src.spec, from_hub=src.hub, expected=src.expected)
    except (AdapterError, OSError) as e:
        return str(e) or type(e).__name__
    except Exception as e:  # noqa: BLE001 — one bad adapter never ends a load of hundreds
        return f"unexpected error while reading: {type(e).__name__}: {e}"


def inspect_sources(sources, base: ModelConfig, policy: FilterPolicy = FilterPolicy(), *, progress: bool = True,
                    workers: int | None = None, cache_dir: str | None = None) -> tuple[list[AdapterInfo], Report]:
    """Pass 1 over every source: the kept adapters' metadata (in source order) and the report."""
    srcs = expand_sources(sources)
    workers = workers or min(8, os.cpu_count() or 1)
    results = [None] * len(srcs)
    with cf.ThreadPoolExecutor(workers) as ex:
        futs = {ex.submit(_inspect, s, base, policy, cache_dir): i for i, s in enumerate(srcs)}
        for fut in track(cf.as_completed(futs), total=len(futs), desc="inspect adapters", unit="adapter",
                         enabled=progress):
            results[futs[fut]] = fut.result()
    rows, kept, seen = [], [], {}
    for src, res in zip(srcs, results):
        if isinstance(res, str):
            rows.append({"source": src.spec, "kept": False, "reason": res})
        elif policy.dedupe and res.digest in seen:
            rows.append({"source": src.spec, "kept": False, "reason": f"duplicate of {seen[res.digest]}"})
        else:
            seen.setdefault(res.digest, src.spec)
            kept.append(res)
            rows.append({"source": src.spec, "kept": True, "reason": "; ".join(["ok"] + res.notes)})
    return kept, Report(rows)


def _module_stack(infos: list[AdapterInfo], module: str, base: ModelConfig, dtype, shardings,
                  layers: range | None = None) -> ModuleStack:
    layers = range(base.num_hidden_layers) if layers is None else layers
    L = len(layers)
    out_dim, in_dim = base.module_shape(module)
    ranks = tuple(info.rank(module) for info in infos)
    offsets = np.concatenate([[0], np.cumsum(ranks)]).astype(np.int64)
    R = int(offsets[-1])
    np_dtype = np.dtype(dtype)

    def fill(index, which):
        shape = (L, R, in_dim) if which == "a" else (L, out_dim, R)
        idx = [range(n)[s] for s, n in zip(index, shape)]
        buf = np.zeros(tuple(len(x) for x in idx), np_dtype)
        rows = np.asarray(idx[1] if which == "a" else idx[2])
        for i, info in enumerate(infos):
            per = info.layers.get(module)
            if not per:
                continue
            sel = (rows >= offsets[i]) & (rows < offsets[i + 1])
            if not sel.any():
                continue
            f, s0 = SafeFile(info.file), info.scale(module)
            for li, layer in enumerate(layers[j] for j in idx[0]):
                if layer not in per:
                    continue
                ka, kb, r, s = per[layer]
                local = rows[sel] - offsets[i]
                ok = local < r  # rows past this layer's rank (rank_pattern) stay zero
                pos = np.flatnonzero(sel)[ok]
                if which == "a":
                    src = np.asarray(f[ka])[local[ok]][:, idx[2]]
                    buf[li, pos, :] = src.astype(np.float32).astype(np_dtype)
                else:
                    src = np.asarray(f[kb])[idx[1]][:, local[ok]].astype(np.float32)
                    buf[li][:, pos] = (src * np.float32(s / s0) if s != s0 else src).astype(np_dtype)
        return buf

    a = jax.make_array_from_callback((L, R, in_dim), shardings["a"]((L, R, in_dim)), lambda ix: fill(ix, "a"))
    b = jax.make_array_from_callback((L, out_dim, R), shardings["b"]((L, out_dim, R)), lambda ix: fill(ix, "b"))
    scale = np.asarray([info.scale(module) for info in infos], np.float32)
    present = np.asarray([[l in info.layers.get(module, {}) for l in layers] for info in infos], bool)
    scale = jax.device_put(scale, shardings["scale"](scale.shape))
    present = jax.device_put(present.reshape(len(infos), L), shardings["present"]((len(infos), L)))
    return ModuleStack(a, b, scale, present, jax.device_put(owner_of(ranks, R), shardings["owner"]((R,))))


def build_pool(infos: list[AdapterInfo], base: ModelConfig, *, dtype=jnp.float32, mesh=None,
               rules: ShardingRules | None = None, layers: range | None = None) -> Pool:
    """Pass 2: the stacks of the kept adapters (modules = union of what they target, MODULES order).
    ``layers``: only this window of layers (the streaming merge); ranks stay the whole model's, so every
    window has the same shapes."""
    modules = [m for m in MODULES if any(info.rank(m) for info in infos)]
    stacks = {}
    for m in modules:
        if mesh is None:
            one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shard = {k: (lambda shape, one=one: one) for k in ("a", "b", "scale", "present", "owner")}
        else:
            rules_ = rules or ShardingRules()
            axes = stack_logical_axes(m)
            shard = {k: (lambda shape, ax=axes[k]: rules_.sharding(mesh, ax, shape)) for k in axes}
        stacks[m] = _module_stack(infos, m, base, dtype, shard, layers)
    return Pool(stacks, tuple(info.source for info in infos))


def load_pool(sources, base_config: ModelConfig, *, policy: FilterPolicy = FilterPolicy(), dtype=jnp.float32,
              mesh=None, rules: ShardingRules | None = None, progress: bool = True, workers: int | None = None,
              cache_dir: str | None = None) -> tuple[Pool, Report]:
    """Load, validate and filter adapters into a stacked ``Pool`` (rows in source order) plus a ``Report``.

    sources: adapter folders, folders of adapter folders, text files of paths / hub ids, hub ids, pool
    manifests (``jaxmerge.pool.manifest``). A source that is not there is a ``SourceError``.
    base_config: the base's ``ModelConfig`` (shapes to check against). dtype: the stacks' dtype.
    mesh / rules: place the stacks sharded like the base weights (``stack_logical_axes``).
    """
    infos, report = inspect_sources(sources, base_config, policy, progress=progress, workers=workers,
                                    cache_dir=cache_dir)
    return build_pool(infos, base_config, dtype=dtype, mesh=mesh, rules=rules), report
