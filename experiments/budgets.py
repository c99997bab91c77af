"""Named compute budgets: the paper's recipe, or a shorter one that fits a real model on 2 CPU cores.

    budget = resolve("auto", world="smollm2-bigbench")   # "cpu" on a CPU backend, else "paper"
    overrides = budget.overrides("ours")                  # Method/Tuning fields for run_method

``paper`` changes nothing (100 tuning steps, LoraHub's 100 evaluations, a 400-step target LoRA, batch 8,
validation every 10 steps, k = 30). ``cpu`` shortens the recipe where the paper's does not fit the
issue's CPU bars (one ``--method ours`` run ≤ 10 min, the whole sweep ≤ 6 CPU-hours on SmolLM2-135M):
fewer tuning steps, fewer gradient-free evaluations, a shorter target LoRA, validation more often so the
best state is still chosen among several, and k = 10 of the world's 24 LoRAs (k = 30 would merge the
whole pool and leave selection nothing to choose). The budget a run used is written into its result.json.
"""

from __future__ import annotations

import dataclasses

from jaxmerge.errors import UserError


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    steps: int | None = None              # gradient tuning steps (the paper: 100)
    evaluations: int | None = None        # LoraHub's gradient-free loss evaluations (the paper: 100)
    target_lora_steps: int | None = None  # the target-task LoRA's steps (the paper: 400)
    eval_every: int | None = None         # validation interval (the paper: 10)
    k: int | None = None                  # LoRAs merged (the paper: 30, π-tuning 20)

    def overrides(self, method_name: str) -> dict:
        """Tuning fields for ``run_method`` (None = the method's recipe)."""
        from jaxmerge.adaptive.methods import method
        kind = method(method_name).tuning.kind
        out = {}
        if kind in ("gradient", "joint"):
            out = {"steps": self.steps, "eval_every": self.eval_every}
        elif kind == "gradient_free":
            out = {"budget": self.evaluations}
        return {k: v for k, v in out.items() if v is not None}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


BUDGETS = {"paper": Budget("paper"),
           "cpu": Budget("cpu", steps=30, evaluations=30, target_lora_steps=100, eval_every=5, k=10)}
CPU_WORLDS = ("smollm2-bigbench",)  # worlds whose base is too large for the paper's recipe on CPUs


def resolve(name: str, world: str | None = None) -> Budget:
    """``auto``: ``cpu`` for a real-model world on a CPU backend, ``paper`` everywhere else."""
    if name == "auto":
        import jax
        name = "cpu" if world in CPU_WORLDS and jax.default_backend() == "cpu" else "paper"
    if name not in BUDGETS:
        raise UserError(f"--budget {name!r}: expected auto or one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
