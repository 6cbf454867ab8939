"""The epoch plan shared by both loaders: coverage, padding, equal step counts, determinism, global shuffle."""

import numpy as np
import pytest

from soft_dist.data.sampler import batches_per_epoch, derive_seed, epoch_plan


def plans(n, batch, world, seed=0, epoch=0, shuffle=True):
    return [
        epoch_plan(n, batch, rank=r, world_size=world, seed=seed, epoch=epoch, shuffle=shuffle) for r in range(world)
    ]


@pytest.mark.parametrize("n,batch,world", [(70, 16, 2), (64, 16, 2), (7, 4, 3), (5, 8, 1), (2, 4, 3), (1000, 64, 8)])
def test_union_of_valid_rows_is_every_sample_once_and_step_counts_agree(n, batch, world):
    ps = plans(n, batch, world)
    assert len({p.positions.shape for p in ps}) == 1, "every rank must yield the same number of full batches"
    assert ps[0].num_batches == batches_per_epoch(n, batch, world)
    valid = np.concatenate([p.positions[p.valid] for p in ps])
    assert sorted(valid.tolist()) == list(range(n))
    # Ranks differ by at most one real sample; only the last batch of a rank holds padding.
    counts = [p.num_valid for p in ps]
    assert max(counts) - min(counts) <= 1 and sum(counts) == n
    for p in ps:  # padding only at the end of a rank's epoch
        assert (np.diff(p.valid.reshape(-1).astype(int)) <= 0).all()


def test_same_seed_same_plan_other_epoch_or_seed_differs():
    a = epoch_plan(100, 8, rank=1, world_size=2, seed=5, epoch=3, shuffle=True)
    b = epoch_plan(100, 8, rank=1, world_size=2, seed=5, epoch=3, shuffle=True)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, epoch_plan(100, 8, rank=1, world_size=2, seed=5, epoch=4, shuffle=True).positions)
    assert not np.array_equal(a.positions, epoch_plan(100, 8, rank=1, world_size=2, seed=6, epoch=3, shuffle=True).positions)


def test_samples_move_between_ranks_across_epochs():
    e0 = set(plans(200, 16, 2, epoch=0)[0].positions[plans(200, 16, 2, epoch=0)[0].valid].tolist())
    p1 = plans(200, 16, 2, epoch=1)[0]
    e1 = set(p1.positions[p1.valid].tolist())
    # A fixed slice per rank would give e0 == e1; a global shuffle moves about half of them.
    assert 50 < len(e0 - e1) < 150


def test_eval_plan_is_split_order_and_epoch_independent():
    a, b = plans(10, 4, 2, shuffle=False), plans(10, 4, 2, epoch=7, shuffle=False)
    np.testing.assert_array_equal(a[0].positions, b[0].positions)
    assert a[0].positions[a[0].valid].tolist() == [0, 2, 4, 6, 8]


def test_bad_arguments():
    with pytest.raises(ValueError):
        epoch_plan(10, 4, rank=2, world_size=2, seed=0, epoch=0, shuffle=True)
    with pytest.raises(ValueError):
        epoch_plan(0, 4, rank=0, world_size=1, seed=0, epoch=0, shuffle=True)


def test_derive_seed_is_stable_and_31_bit():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert 0 <= derive_seed(2**40, -1) < 2**31


@pytest.mark.parametrize("n,batch,world", [(70, 16, 2), (1258, 64, 2), (7, 2, 3), (1000, 64, 8)])
def test_a_mid_epoch_start_continues_the_plan_with_the_same_rows_and_padding(n, batch, world):
    """After s steps the ranks trained the first s * B * W entries of the order; a plan from there is the
    rest of the uninterrupted plan, padding rows included (they are in the batch's BatchNorm statistics)."""
    whole = plans(n, batch, world, seed=3, epoch=2)
    for steps in range(1, whole[0].num_batches):
        start = steps * batch * world
        for rank in range(world):
            rest = epoch_plan(n, batch, rank=rank, world_size=world, seed=3, epoch=2, shuffle=True, start=start)
            assert np.array_equal(rest.positions, whole[rank].positions[steps:])
            assert np.array_equal(rest.valid, whole[rank].valid[steps:])


@pytest.mark.parametrize("new_world", [1, 3, 4])
def test_a_mid_epoch_start_with_another_world_size_still_trains_every_sample_once(new_world):
    n, batch, world, steps = 203, 8, 2, 5
    before = np.concatenate([p.positions[:steps][p.valid[:steps]] for p in plans(n, batch, world, seed=1, epoch=4)])
    after = [epoch_plan(n, batch, rank=r, world_size=new_world, seed=1, epoch=4, shuffle=True,
                        start=steps * batch * world) for r in range(new_world)]
    assert len({p.positions.shape for p in after}) == 1  # equal step counts in the resumed group
    rest = np.concatenate([p.positions[p.valid] for p in after])
    assert sorted(np.concatenate([before, rest]).tolist()) == list(range(n))
    with pytest.raises(ValueError, match="cannot start at sample 203"):
        epoch_plan(n, batch, rank=0, world_size=1, seed=1, epoch=4, shuffle=True, start=n)
