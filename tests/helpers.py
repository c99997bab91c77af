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

from jaxmerge.config import MODULES, LlamaConfig, RopeConfig
from jaxmerge.lora import Factored
from jaxmerge.models.schema import module_name
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


# Tiny configs of the other families (transformers' config kwargs): GQA, an explicit head_dim that is
# not hidden/heads (Qwen3), q/k/v biases (Qwen2), a sliding window smaller than the test sequences.
FAMILY_TINY = {
    "llama": TINY,
    "qwen3": dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6, max_position_embeddings=256,
                  rope_theta=1e6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "qwen2": dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, rope_theta=1e6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "mistral": dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=256,
                    rope_theta=1e4, sliding_window=7, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0),
}


def hf_model(path, model_type="llama", seed=0, dtype=None, **overrides):
    """Save a random transformers ``*ForCausalLM`` of ``model_type`` with FAMILY_TINY (+ overrides) to
    ``path`` (eager attention); norms (q/k norms included) and biases are perturbed so that they matter.
    Returns the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(FAMILY_TINY[model_type])
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **kw)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # non-trivial norms and biases so that they are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return model


def hf_llama(path, seed=0, dtype=None, **overrides):
    """Save a random transformers LlamaForCausalLM with TINY (+ overrides) to ``path``; return the model."""
    return hf_model(path, "llama", seed, dtype, **overrides)


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
        o, i = config.module_shape(m)
        a, b, mul = np.zeros((L, r, i), np.float32), np.zeros((L, o, r), np.float32), np.zeros((L, r), np.float32)
        for layer in cfg.get("layers_to_transform") or range(L):
            key = f"base_model.model.{module_name(layer, m)}"
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
        mods[m] = ModuleStack.from_ranks(jnp.asarray(np.concatenate(a_parts, 1)), jnp.asarray(np.concatenate(b_parts, 2)),
                                         jnp.asarray([al / r for r, al, _, _ in POOL_SPEC], jnp.float32),
                                         jnp.asarray(np.stack(present)), ranks)
    return Pool(mods, tuple(f"lora{i}" for i in range(len(POOL_SPEC))))


def examples(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 10, 2)
        out.append({"prompt": f"what is {a} plus {b} ?", "answer": str(a + b), "choices": None})
    return out


def make_setup(root: str, tied: bool = False):
    """(Base, Pool, TaskData) from ``root`` (written on first call); ``tied``: the LM head is the embedding."""
    import jaxmerge
    from jaxmerge.tasks import Task, TaskData
    base_dir = os.path.join(root, "base")
    if not os.path.exists(os.path.join(base_dir, "tokenizer_config.json")):
        hf_llama(base_dir, vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=2, eos_token_id=3, pad_token_id=0,
                 tie_word_embeddings=tied)
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
        modules[m] = ModuleStack.from_ranks(jnp.asarray(np.concatenate(a, 1), jnp.float32),
                                            jnp.asarray(np.concatenate(b, 2), jnp.float32),
                                            jnp.asarray(rng.uniform(0.5, 2, 7), jnp.float32), jnp.asarray(present), rk)
    pool = Pool(modules, tuple(f"a{i}" for i in range(7)))
    prompts = [" ".join(rng.choice(MW_WORDS, size=n)) for n in (3, 5, 2, 6, 4)]
    examples = [dict(prompt=p, answer=" ".join(rng.choice(MW_WORDS, size=2))) for p in prompts]
    return tok, config, params, pool, examples


# --- a local Hugging Face hub and caches in huggingface_hub's own layout ------------------------------
HUB_LICENSE = "---\nlicense: apache-2.0\n---\n"  # a model card whose front matter states a licence


def folder_files(folder) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``folder`` (a repo's content for ``FakeHub.add``)."""
    root = os.fspath(folder)
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


class FakeHub:
    """A tiny HTTP server on 127.0.0.1 speaking enough of the Hub's API for ``huggingface_hub``'s own
    download code (``hf_hub_download``, ``snapshot_download``, ``model_info``/``dataset_info``,
    ``list_repo_tree``): repo info, tree listings, ``resolve`` with the hub's headers (``X-Repo-Commit``,
    ``ETag`` / ``X-Linked-Etag`` for LFS files, sizes, ``Range``), and its error codes (``RepoNotFound``,
    ``EntryNotFound``, ``GatedRepo``). ``*.safetensors`` / ``*.bin`` files are served as LFS files.

        with FakeHub() as hub:
            hub.add("org/name", folder)                      # or {"file": bytes}; repo_type="dataset"
            hf_hub_download("org/name", "config.json", endpoint=hub.url, cache_dir=...)

    ``hub.requests`` logs ``(method, path)`` of every request (tests of resumable downloads).
    """

    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []

    def add(self, repo_id: str, files, repo_type: str = "model", gated: bool = False) -> str:
        """Serve ``files`` (a folder, or ``{path: bytes}``) as ``repo_id``; returns its commit hash."""
        import hashlib
        if not isinstance(files, dict):
            files = folder_files(files)
        entries = {}
        for path, data in sorted(files.items()):
            data = data.encode() if isinstance(data, str) else bytes(data)
            git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            lfs = hashlib.sha256(data).hexdigest() if path.endswith((".safetensors", ".bin")) else None
            entries[path] = {"data": data, "oid": git, "lfs": lfs}
        commit = hashlib.sha1("".join(p + e["oid"] for p, e in entries.items()).encode()
                              + repo_id.encode()).hexdigest()
        self.repos[(repo_type, repo_id)] = {"files": entries, "sha": commit, "gated": gated}
        return commit

    # --- server -------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeHub":
        import http.server
        import threading
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, h, body: bool):
        from urllib.parse import unquote, urlsplit
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._json(h, body, *self._repo(m[1][:-1], m[2], lambda r: self._info(m[2], r)))
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
        if m:
            return self._json(h, body, *self._repo(m[1][:-1], m[2], self._tree))
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file(h, body, "dataset" if m[1] else "model", m[2], m[4])
        self._error(h, 404, None, "not an endpoint of this fake hub")

    def _repo(self, repo_type, repo_id, make):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return 404, {"error": "Repository not found"}, "RepoNotFound"
        return 200, make(repo), None

    def _info(self, repo_id, repo):
        return {"id": repo_id, "sha": repo["sha"], "private": False, "gated": "auto" if repo["gated"] else False,
                "siblings": [{"rfilename": p} for p in repo["files"]]}

    @staticmethod
    def _tree(repo):
        out = []
        for p, e in repo["files"].items():
            row = {"type": "file", "path": p, "size": len(e["data"]), "oid": e["oid"]}
            if e["lfs"]:
                row["lfs"] = {"oid": e["lfs"], "size": len(e["data"]), "pointerSize": 134}
            out.append(row)
        return out

    def _json(self, h, body, status, obj, code):
        if code:
            return self._error(h, status, code, obj["error"])
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h, body, repo_type, repo_id, name):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if repo["gated"]:
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted")
        e = repo["files"].get(name)
        if e is None:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist", commit=repo["sha"])
        data, start = e["data"], 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        h.send_response(206 if rng else 200)
        if rng:
            start = int(rng[1])
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("X-Repo-Commit", repo["sha"])
        h.send_header("ETag", f'"{e["oid"]}"')
        if e["lfs"]:
            h.send_header("X-Linked-Etag", f'"{e["lfs"]}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if body:
            h.wfile.write(data[start:])

    @staticmethod
    def _error(h, status, code, message, commit=None):
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def online_hub(endpoint: str):
    """A context in which ``huggingface_hub`` may reach ``endpoint`` even under the suite's
    ``HF_HUB_OFFLINE=1`` (its offline flag is read once at import; restored on exit)."""
    import contextlib

    import huggingface_hub.constants as hc

    @contextlib.contextmanager
    def ctx():
        old = hc.HF_HUB_OFFLINE
        hc.HF_HUB_OFFLINE = False
        try:
            yield endpoint
        finally:
            hc.HF_HUB_OFFLINE = old
    return ctx()


def hub_cache(cache_dir, repos, repo_type: str = "model") -> dict[str, str]:
    """Write ``repos`` (``{repo_id: folder or {path: bytes}}``) into a Hugging Face cache at ``cache_dir``
    in huggingface_hub's own layout (blobs / snapshots / refs, written by its own ``snapshot_download``
    from a ``FakeHub``); ``repo_type`` "model" or "dataset". Returns ``{repo_id: snapshot folder}``.
    Point the code under test at it with ``HF_HUB_CACHE`` / ``huggingface_hub.constants.HF_HUB_CACHE``
    (see ``use_hub_cache``) and run it with ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import snapshot_download
    out = {}
    with FakeHub() as hub, online_hub(hub.url):
        for repo_id, files in repos.items():
            hub.add(repo_id, files, repo_type=repo_type)
            out[repo_id] = snapshot_download(repo_id, repo_type=repo_type, cache_dir=os.fspath(cache_dir),
                                             endpoint=hub.url)
    return out


def use_hub_cache(monkeypatch, cache_dir) -> None:
    """Make this process (``huggingface_hub.constants``) and its subprocesses (``HF_HUB_CACHE``) use the
    cache at ``cache_dir``, offline."""
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_CACHE", os.fspath(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", os.fspath(cache_dir))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


# ------------------------------------------------------------------------ injected masks (merge oracles)
def fixed_uniform(shape) -> np.ndarray:
    """A fixed U[0, 1) float32 pattern of ``shape`` (an integer hash of the flat index; exact in NumPy, so
    jaxmerge and torch see the same numbers): the noise both sides of a random-mask oracle share."""
    x = np.arange(int(np.prod(shape)), dtype=np.uint32) * np.uint32(0x9E3779B1) + np.uint32(int(np.prod(shape)))
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        x ^= x >> np.uint32(shift)
        if mul is not None:
            x *= np.uint32(mul)
    return ((x >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)


def fixed_noise(key, shape):
    """jaxmerge's ``noise`` argument for an injected mask (ignores the key)."""
    return jnp.asarray(fixed_uniform(tuple(shape)))


def fixed_bernoulli(p, *args, **kwargs):
    """A drop-in for ``torch.bernoulli(p)`` that keeps entry i when fixed_uniform < p_i (the same mask)."""
    import torch
    return (torch.from_numpy(fixed_uniform(tuple(p.shape))) < p).to(p.dtype)


def sharding_mismatches(params, config, mesh, rules) -> list[str]:
    """Leaves of ``params`` whose sharding is not the one ``rules`` give their logical axes on ``mesh``."""
    from jax.sharding import NamedSharding

    from jaxmerge.sharding import param_logical_axes
    axes = jax.tree_util.tree_flatten_with_path(param_logical_axes(config), is_leaf=lambda x: isinstance(x, tuple))[0]
    bad = []
    for (kp, leaf), (_, ax) in zip(jax.tree_util.tree_flatten_with_path(params)[0], axes):
        want = rules.spec(ax, leaf.shape, mesh)
        if not (isinstance(leaf.sharding, NamedSharding) and leaf.sharding.spec == want):
            bad.append(f"{jax.tree_util.keystr(kp)}: {leaf.sharding} != {want}")
    return bad


# --- GGUF files and a local package index (jaxmerge.gguf, registry sources, the smollm2 world) ---------
GGUF_DIMS = dict(hidden=64, ffn=96, layers=2, heads=4, kv_heads=2, head_dim=16)
GGUF_CHAT = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable character table (the alphabet of byte-level BPE vocabularies)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _gguf_vocab():
    """A byte-level BPE vocabulary: 3 control tokens, the 256 byte characters, a few merges, control padding."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "a t", "Ġ c", "Ġc at", "Ġ s", "Ġs at", "Ġ m", "Ġm at", "o n", "Ġ on"]
    tokens = specials + _byte_chars() + [m.replace(" ", "") for m in merges]
    tokens += [f"<pad{i}>" for i in range(-len(tokens) % 32)]  # unused control slots, as real vocabularies have
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    types[-1] = 3
    return tokens, merges, types


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf row permutation of q/k (rotary halves interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, tied: bool, seed: int = 0) -> None:
    """A tiny Llama as a GGUF file written by the gguf package's writer: quantised tensor types (Q4_0,
    Q4_1, Q5_0, Q5_1, Q8_0, F16, F32), llama.cpp's q/k permutation, a byte-level BPE vocabulary with
    control tokens and a ChatML template; ``tied``: no output.weight."""
    import gguf
    Q = gguf.GGMLQuantizationType
    d = GGUF_DIMS
    D, F, L, H, G, K = d["hidden"], d["ffn"], d["layers"], d["heads"], d["kv_heads"], d["head_dim"]
    rng = np.random.default_rng(seed)
    tokens, merges, types = _gguf_vocab()
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(G)
    w.add_rope_dimension_count(K)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(GGUF_CHAT)

    def tensor(name, shape, qtype, scale=0.2, offset=0.0, n_head=None):
        x = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
        if n_head is not None:
            x = llama_cpp_permute(x, n_head)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (len(tokens), D), Q.Q8_0, scale=1.0)
    tensor("output_norm.weight", (D,), Q.F32, 0.1, 1.0)
    if not tied:
        tensor("output.weight", (len(tokens), D), Q.Q4_1)
    kinds = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.F16, Q.Q5_1, Q.Q4_1]
    for i in range(L):
        tensor(f"blk.{i}.attn_norm.weight", (D,), Q.F32, 0.1, 1.0)
        tensor(f"blk.{i}.ffn_norm.weight", (D,), Q.F32, 0.1, 1.0)
        tensor(f"blk.{i}.attn_q.weight", (H * K, D), kinds[i % 7], n_head=H)
        tensor(f"blk.{i}.attn_k.weight", (G * K, D), kinds[(i + 1) % 7], n_head=G)
        tensor(f"blk.{i}.attn_v.weight", (G * K, D), kinds[(i + 2) % 7])
        tensor(f"blk.{i}.attn_output.weight", (D, H * K), kinds[(i + 3) % 7])
        tensor(f"blk.{i}.ffn_gate.weight", (F, D), kinds[(i + 4) % 7])
        tensor(f"blk.{i}.ffn_up.weight", (F, D), kinds[(i + 5) % 7])
        tensor(f"blk.{i}.ffn_down.weight", (D, F), kinds[(i + 6) % 7])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fake_wheel(path, name, version, files):
    """A wheel (zip) of ``files`` {member: bytes|str} with minimal dist-info."""
    import zipfile
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
        info = f"{name.replace('-', '_')}-{version}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


def fake_sdist(path, top, files):
    """A gzipped-tar sdist under ``top/`` of ``files`` whose setup.py cannot build (as pip meets some sdists)."""
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as t:
        for member, data in {**files, f"{top}/PKG-INFO": "Metadata-Version: 2.1\nName: x\n",
                             f"{top}/setup.py": "raise SystemExit('not buildable here')\n"}.items():
            blob = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))


def local_index(root, dists) -> str:
    """A PEP 503 index under ``root/simple`` listing ``dists`` = {project: [archive paths]} with their
    sha256; returns its file:// URL."""
    import hashlib
    for project, files in dists.items():
        page = os.path.join(root, "simple", project)
        os.makedirs(page, exist_ok=True)
        links = "".join(f'<a href="file://{f}#sha256={hashlib.sha256(open(f, "rb").read()).hexdigest()}">'
                        f"{os.path.basename(f)}</a>\n" for f in files)
        with open(os.path.join(page, "index.html"), "w") as fh:
            fh.write(f"<html><body>{links}</body></html>")
    return f"file://{root}/simple"


def use_local_index(monkeypatch, url: str, cache: str) -> None:
    """pip and jaxmerge.registry_source see only the index at ``url`` (no machine pip.conf, no find-links,
    no pip cache), and jaxmerge's cache is ``cache``."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("JAXMERGE_CACHE", cache)


# Three PEFT adapters of mixed shapes (ranks 4/8/2, rsLoRA, different modules, one on layer 1 only): the
# merge oracles' standard pool
MIXED_ADAPTERS = (dict(seed=1, r=4),
                  dict(seed=2, r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
                  dict(seed=3, r=2, target_modules=["q_proj", "gate_proj", "down_proj"], layers_to_transform=[1]))


def write_mixed_adapters(model, root, names=("a0", "a1", "a2")) -> list:
    """``MIXED_ADAPTERS`` written by PEFT under ``root/<name>``; returns the folders."""
    for n, spec in zip(names, MIXED_ADAPTERS):
        write_adapter(model, root / n, **spec)
    return [root / n for n in names]
