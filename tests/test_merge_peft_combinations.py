"""``jaxmerge merge --format peft`` against PEFT's own ``add_weighted_adapter`` (the adapter-to-adapter
path): for each combination type the adapter jaxmerge writes gives the ΔW of the adapter PEFT makes —
exactly for ``cat`` (= ``--method linear``) and ``linear`` (= ``--method factor_linear``, PEFT's
factor-wise sum with cross terms); the SVD types (``svd``, ``ties_svd``, ``dare_linear_svd``,
``dare_ties_svd``, ``magnitude_prune_svd``) are the best rank-r approximation of the same dense merge,
which is unique here (distinct singular values), so both sides must agree to float32 SVD accuracy.
Random drops: PEFT's ``torch.bernoulli`` and jaxmerge's noise share one injected pattern.

Tolerance: 1e-6 × the largest |ΔW| entry for the exact types (float32 products of O(1) factors, summed in
another order), 1e-5 for the SVD types (float32 SVDs of 64–112 wide matrices).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from helpers import fixed_bernoulli, fixed_noise, hf_llama, write_adapter, write_mixed_adapters
from jaxmerge.cli import main
from jaxmerge.merge.stream import stream_merge

L = 2
W = [0.7, -0.4, 1.3]
RANK = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("combos")
    model = hf_llama(root / "base")
    write_mixed_adapters(model, root, "abc")
    write_adapter(model, root / "e0", seed=4, r=4, target_modules=["q_proj", "down_proj"])
    write_adapter(model, root / "e1", seed=5, r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"])
    return root


def _peft_deltas(root, names, combination, weights, **kw):
    """{(module, layer): ΔW} of the adapter PEFT's add_weighted_adapter builds from ``names``."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(root / "base"), root / names[0],
                                      adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(root / n, adapter_name=n)
    model.add_weighted_adapter(list(names), list(weights), "merged", combination_type=combination, **kw)
    out = {}
    for l, layer in enumerate(model.base_model.model.model.layers):
        for blk in (layer.self_attn, layer.mlp):
            for mod, lin in blk.named_children():
                if hasattr(lin, "lora_A") and "merged" in lin.lora_A:
                    with torch.no_grad():
                        out[mod, l] = lin.get_delta_weight("merged").float().numpy()
    return out


def _ours(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(folder / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    assert scale == 1.0 and not cfg["use_rslora"]
    out = {}
    for k in t:
        if ".lora_A." in k:
            parts = k.split(".")
            l, mod = int(parts[parts.index("layers") + 1]), parts[parts.index("layers") + 3]
            out[mod, l] = t[k.replace("lora_A", "lora_B")].astype(np.float64) @ t[k]
    return out, cfg


def _compare(ours, theirs, tol=1e-5):
    assert set(theirs) <= set(ours)
    for key, d in theirs.items():
        np.testing.assert_allclose(ours[key], d, rtol=0, atol=tol * max(1.0, np.abs(d).max()), err_msg=str(key))
    for key in set(ours) - set(theirs):  # modules PEFT's merged adapter lacks: zero in ours
        assert not ours[key].any(), key


def _merge(world, tmp_path, names, method, weights, *extra):
    out = tmp_path / method
    args = ["merge", "--base", str(world / "base"), "--adapters", *[str(world / n) for n in names],
            "--method", method, "--weights", *map(str, weights), "--format", "peft", "--out", str(out), "--quiet"]
    assert main(args + list(extra)) == 0
    return _ours(out)


def test_cat_is_linear_exactly(world, tmp_path):
    ours, cfg = _merge(world, tmp_path, "abc", "linear", W)
    assert cfg["r"] == 4 + 8 + 2  # the concatenated ranks, as PEFT's cat
    _compare(ours, _peft_deltas(world, "abc", "cat", W), tol=1e-6)


def test_peft_linear_is_factor_linear(world, tmp_path):
    ours, cfg = _merge(world, tmp_path, ["e0", "e1"], "factor_linear", W[:2])
    assert cfg["r"] == 4
    theirs = _peft_deltas(world, ["e0", "e1"], "linear", W[:2])
    _compare(ours, theirs, tol=1e-6)
    # and it is not the exact weighted sum (the cross terms B_0·A_1 are there)
    exact, _ = _merge(world, tmp_path, ["e0", "e1"], "linear", W[:2])
    assert np.abs(exact["q_proj", 0] - theirs["q_proj", 0]).max() > 1e-2


@pytest.mark.parametrize("combination,method,extra", [
    ("svd", "linear", []),
    ("ties_svd", "ties", ["--density", "0.6"]),
    ("ties_svd", "ties", ["--density", "0.3", "--sign", "frequency"]),
    ("magnitude_prune_svd", "magnitude_prune", ["--density", "0.4"]),
])
def test_svd_combinations_are_the_best_rank_r_of_the_same_merge(world, tmp_path, combination, method, extra):
    ours, cfg = _merge(world, tmp_path, "abc", method, W, "--rank", str(RANK), *extra)
    assert cfg["r"] == RANK
    kw = dict(svd_rank=RANK)
    if "--density" in extra:
        kw["density"] = float(extra[extra.index("--density") + 1])
    if "--sign" in extra:
        kw["majority_sign_method"] = extra[extra.index("--sign") + 1]
    _compare(ours, _peft_deltas(world, "abc", combination, W, **kw))


@pytest.mark.parametrize("combination,method,density", [("dare_linear_svd", "dare_linear", 0.5),
                                                         ("dare_ties_svd", "dare_ties", 0.7)])
def test_dare_svd_combinations_with_the_same_mask(world, tmp_path, monkeypatch, combination, method, density):
    """The library call behind ``jaxmerge merge`` (``stream_merge``), given the injected noise."""
    monkeypatch.setattr(torch, "bernoulli", fixed_bernoulli)
    out = tmp_path / method
    stream_merge(str(world / "base"), [str(world / n) for n in "abc"], str(out), method=method,
                 params={"density": density}, weights=W, fmt="peft", rank=RANK, progress=False, noise=fixed_noise)
    ours, _ = _ours(out)
    _compare(ours, _peft_deltas(world, "abc", combination, W, svd_rank=RANK, density=density))
