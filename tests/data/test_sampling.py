"""EpochSampler and CropFlip: the pieces that make resumed and multi-process runs reproduce a single run."""

from __future__ import annotations

import pytest
import torch

from tenfold.data.augment import CropFlip
from tenfold.data.sampling import EpochSampler


def test_epoch_order_is_seeded_and_changes_with_epoch():
    a, b = EpochSampler(50, shuffle=True, seed=3), EpochSampler(50, shuffle=True, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    assert list(EpochSampler(50, shuffle=True, seed=4)) != first


def test_shards_interleave_to_the_single_process_order():
    single = list(EpochSampler(40, shuffle=True, seed=0))
    r0 = list(EpochSampler(40, shuffle=True, seed=0, rank=0, world_size=2))
    r1 = list(EpochSampler(40, shuffle=True, seed=0, rank=1, world_size=2))
    # global batch k of 8 on one process == per-rank batches k of 4 on two processes, together
    for k in range(5):
        assert sorted(single[8 * k : 8 * k + 8]) == sorted(r0[4 * k : 4 * k + 4] + r1[4 * k : 4 * k + 4])


def test_padding_and_drop_last():
    padded = [list(EpochSampler(5, shuffle=False, rank=r, world_size=2)) for r in (0, 1)]
    assert padded == [[0, 2, 4], [1, 3, 0]]
    dropped = [list(EpochSampler(5, shuffle=False, rank=r, world_size=2, drop_last=True)) for r in (0, 1)]
    assert dropped == [[0, 2], [1, 3]]


def test_resume_skips_consumed_samples_once():
    sampler = EpochSampler(30, shuffle=True, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(2, 12)
    assert list(sampler) == full[12:]
    assert list(sampler) == full  # the skip applies to one pass only
    sampler.resume(2, 12)
    sampler.set_epoch(3)  # a new epoch drops a pending skip
    assert len(list(sampler)) == 30


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_samples"):
        EpochSampler(0, shuffle=True)


def test_crop_flip_matches_a_per_image_reference():
    aug = CropFlip(num_samples=6, padding=2, seed=0)
    images = torch.rand(4, 3, 8, 8)
    images[3] = images[2]
    index = torch.tensor([5, 0, 3, 3])
    out = aug(images, index, epoch=0)
    offsets, flips = aug._tables_for(0)
    for i, idx in enumerate(index.tolist()):
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        oy, ox = offsets[idx].tolist()
        expected = padded[:, oy : oy + 8, ox : ox + 8]
        if flips[idx]:
            expected = expected.flip(-1)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)
    # the same sample gets the same augmentation in any batch, a different one in another epoch
    torch.testing.assert_close(out[2], out[3], rtol=0, atol=0)
    again = aug(images[[1]], index[[1]], epoch=0)
    torch.testing.assert_close(again[0], out[1], rtol=0, atol=0)
    assert not torch.equal(aug(images, index, epoch=1), out)


def test_iterating_a_resumable_loader_leaves_the_global_rng_alone():
    # each new iterator draws a worker base seed; from the global RNG that draw would shift dropout after a resume
    import torch

    from tenfold.data.sampling import EpochSampler, ResumableDataLoader

    loader = ResumableDataLoader(
        list(range(8)), batch_size=2, sampler=EpochSampler(8, shuffle=True, seed=3), progress=lambda: (0, 0)
    )
    state = torch.get_rng_state()
    for _ in range(2):
        list(loader)
    assert torch.equal(torch.get_rng_state(), state)
