"""Kill-and-resume: a run SIGKILLed mid-training and started again with the same output folder ends
with the same coefficients, best validation loss and test accuracy as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
from helpers import make_setup  # noqa: E402

STEPS = 12
SCRIPT = f"""
import sys
from helpers import make_setup
from jaxmerge.adaptive.run import run_method
base, pool, data = make_setup(sys.argv[1])
r = run_method("adamerging", base, pool, data, k=3, seed=7, out_dir=sys.argv[2], steps={STEPS}, eval_every=2,
               progress=False)
print("RESUMED_FROM", r.get("resumed_from"))
"""


def _child(root, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the suite's compilation cache (conftest) comes with os.environ
    return subprocess.Popen([sys.executable, "-c", SCRIPT, root, out], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _steps_saved(out):
    d = os.path.join(out, "train", "ckpt")
    if not os.path.isdir(d):
        return []
    return sorted(int(x) for x in os.listdir(d) if x.isdigit())


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    from jaxmerge.adaptive.run import run_method
    root = str(tmp_path / "setup")
    base, pool, data = make_setup(root)
    out = str(tmp_path / "killed")
    p = _child(root, out)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill once a mid-run checkpoint exists
        if any(0 < s < STEPS for s in _steps_saved(out)):
            break
        time.sleep(0.05)
    assert p.poll() is None, "the first run ended before it could be killed:\n" + p.stdout.read()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = _steps_saved(out)
    assert killed_at and max(killed_at) < STEPS and not os.path.exists(os.path.join(out, "result.json"))

    q = _child(root, out)
    text, _ = q.communicate(timeout=300)
    assert q.returncode == 0, text
    resumed = json.load(open(os.path.join(out, "result.json")))
    assert resumed["resumed_from"] is not None and 0 < resumed["resumed_from"] < STEPS, text

    ref = run_method("adamerging", base, pool, data, k=3, seed=7, out_dir=str(tmp_path / "straight"), steps=STEPS,
                     eval_every=2, progress=False)
    assert ref["resumed_from"] is None
    a, b = np.load(resumed["coefficients_path"]), np.load(ref["coefficients_path"])
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    assert resumed["test_accuracy"] == ref["test_accuracy"]
    np.testing.assert_allclose(resumed["best_val_loss"], ref["best_val_loss"], rtol=1e-6)
    assert [h[0] for h in resumed["history"]] == [h[0] for h in ref["history"]]
    np.testing.assert_allclose([h[1] for h in resumed["history"]], [h[1] for h in ref["history"]], rtol=1e-6)
