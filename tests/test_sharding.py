"""ShardingRules: logical → mesh axes, and strict mode (a collision or an indivisible dimension raises,
naming it, instead of being replicated)."""

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from jaxmerge.sharding import ShardingError, ShardingRules

MESH = AbstractMesh((4, 2), ("data", "tensor"))


def test_default_spec_and_what_it_replicates():
    rules = ShardingRules()
    assert rules.spec(("layers", "heads", "embed"), (2, 8, 16), MESH) == P(None, "tensor", "data")
    spec, replicated = rules.resolve(("layers", "heads", "embed"), (2, 8, 6), MESH)
    assert spec == P(None, "tensor", None)
    assert replicated == ["dim 2 ('embed', size 6) is not divisible by mesh axes ('data',) (4)"]


def test_strict_raises_on_an_indivisible_dimension():
    with pytest.raises(ShardingError, match=r"dim 1 \('heads', size 3\) is not divisible by mesh axes \('tensor',\) \(2\)"):
        ShardingRules().spec(("layers", "heads", "embed"), (2, 3, 16), MESH, strict=True)


def test_strict_raises_on_a_collision():
    rules = ShardingRules(rank="data")  # rank rows and the model dim both over data
    assert rules.spec(("layers", "rank", "embed"), (2, 8, 16), MESH) == P(None, "data", None)
    with pytest.raises(ShardingError, match=r"dim 2 \('embed'\) would reuse mesh axis 'data' of dim 1"):
        rules.spec(("layers", "rank", "embed"), (2, 8, 16), MESH, strict=True)
    assert ShardingRules(rank="data", embed=None).spec(("layers", "rank", "embed"), (2, 8, 16), MESH,
                                                       strict=True) == P(None, "data", None)


def test_unknown_logical_axis_is_named():
    with pytest.raises(ShardingError, match="logical axis 'hidden'"):
        ShardingRules().spec(("hidden",), (4,), MESH)


def test_not_strict_says_what_it_replicated(caplog):
    import logging

    from jaxmerge.sharding import strict_shardings
    with caplog.at_level(logging.INFO, logger="jaxmerge.sharding"):
        (sh,) = strict_shardings([("w", ("heads", "embed"), (3, 16))], MESH, ShardingRules(), strict=False)
    assert sh.spec == P(None, "data")
    assert "1 dimension(s) are replicated on mesh" in caplog.text and "w: dim 0 ('heads', size 3)" in caplog.text
    with pytest.raises(ShardingError, match=r"1 dimension\(s\) would be replicated"):
        strict_shardings([("w", ("heads", "embed"), (3, 16))], MESH, ShardingRules(), strict=True)
