"""mergekit 0.1.5 itself as the oracle: its per-matrix task-vector methods run on full models
(``base+lora`` references, ``lora_merge_cache``) equal ``jaxmerge merge``'s folded output.

mergekit materialises every base+LoRA model and re-derives ΔW_i = (W + ΔW_i) − W; in float32 that
subtraction loses ~ulp(|W|)/2 and breaks ties differently, which TIES-like trims amplify (BUILD_NOTES,
"mergekit's TIES"), so the LoRAs are merged into the cached models in float64 (``lora_merge_dtype``) and
mergekit computes in float64; jaxmerge computes ΔW_i from the factors in float32. Tolerance: 1e-6
absolute on W + ΔW (float32 rounding of O(1) sums). Random masks (DELLA): mergekit's ``torch.bernoulli``
and jaxmerge's noise share one injected pattern. mergekit's ``dare_*`` are not here: they rescale by the
L1 norm, not PEFT's 1/(1 − p) (jaxmerge's dare_* are PEFT's, tested against PEFT).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from helpers import fixed_bernoulli, fixed_noise, hf_llama, write_mixed_adapters

import mergekit  # noqa: F401,E402 — in the test extra: the oracle must be there, never skipped

W3 = [1.0, 0.5, -0.7]
WPOS = [1.0, 0.5, 2.0]
# (mergekit method, jaxmerge method, parameters (both sides), weights)
CASES = [
    ("task_arithmetic", "linear", {}, W3),
    ("ties", "ties", {"density": 0.8}, [1.0, 1.0, 1.0]),       # PEFT's TIES = mergekit's at weight 1
    ("ties", "ties_mergekit", {"density": 0.6}, WPOS),          # mergekit's own weighting
    ("breadcrumbs", "breadcrumbs", {"density": 0.7, "gamma": 0.05}, W3),
    ("breadcrumbs_ties", "breadcrumbs_ties", {"density": 0.7, "gamma": 0.05}, WPOS),
    ("della", "della", {"density": 0.5, "epsilon": 0.2}, WPOS),
    ("della_linear", "della_linear", {"density": 0.5, "epsilon": 0.2}, W3),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mergekit")
    model = hf_llama(root / "base")
    write_mixed_adapters(model, root, ("a0", "a1", "a2"))
    return root


def _mergekit(root, method, params, weights, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    cfg = {"merge_method": method, "base_model": str(root / "base"), "dtype": "float64",
           "models": [{"model": f"{root / 'base'}+{root / f'a{i}'}", "parameters": {"weight": w, **params}}
                      for i, w in enumerate(weights)]}
    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              MergeOptions(lora_merge_cache=str(root / "lora-cache"), lora_merge_dtype="float64", quiet=True,
                           copy_tokenizer=False, write_model_card=False))
    out_t = {}
    for f in glob.glob(os.path.join(out, "*.safetensors")):
        out_t.update(load_file(f))
    return out_t


def _jaxmerge(root, method, params, weights, out, noise=None):
    from jaxmerge.merge.stream import stream_merge
    kw = {} if noise is None else {"noise": noise}
    stream_merge(str(root / "base"), [str(root / f"a{i}") for i in range(3)], str(out), method=method, params=params,
                 weights=weights, progress=False, **kw)
    return load_file(os.path.join(out, "model.safetensors"))


def _layer_keys(t):
    return [k for k in t if ".layers." in k and k.endswith("_proj.weight")]


@pytest.mark.parametrize("mk_method,method,params,weights", CASES, ids=[c[1] for c in CASES])
def test_mergekit_methods_equal_jaxmerge(world, tmp_path, monkeypatch, mk_method, method, params, weights):
    from jaxmerge.merge import registry
    random = registry.get(method).random
    if random:
        monkeypatch.setattr(torch, "bernoulli", fixed_bernoulli)
    theirs = _mergekit(world, mk_method, params, weights, tmp_path / "mk")
    ours = _jaxmerge(world, method, params, weights, tmp_path / "jm", noise=fixed_noise if random else None)
    base = load_file(world / "base" / "model.safetensors")
    keys = _layer_keys(base)
    assert set(keys) <= set(theirs)
    changed = 0
    for k in keys:
        np.testing.assert_allclose(ours[k].astype(np.float64), theirs[k], rtol=0, atol=1e-6, err_msg=k)
        changed += np.abs(theirs[k] - base[k]).max() > 1e-3
    assert changed >= 8  # the merge did something on the matrices the LoRAs target


def test_peft_ties_differs_from_mergekits_when_weights_are_not_one(world, tmp_path):
    """The one semantic difference: mergekit elects on w_i·δ_i and divides by the agreeing weights' sum,
    PEFT (jaxmerge's ``ties``) elects on δ_i and divides by the agreeing count."""
    theirs = _mergekit(world, "ties", {"density": 0.6}, WPOS, tmp_path / "mk")
    ours = _jaxmerge(world, "ties", {"density": 0.6}, WPOS, tmp_path / "jm")
    worst = max(np.abs(ours[k].astype(np.float64) - theirs[k]).max() for k in _layer_keys(ours))
    assert worst > 1e-2
