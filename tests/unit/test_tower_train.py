"""The image tower's batches, augmentation and catalog-wide InfoNCE (mmpipeline.embed.tower.train)."""

import numpy as np
import torch

from mmpipeline.embed.tower.train import augment, catalog_nce, grouped_batches


def test_grouped_batches_keep_a_group_together_and_cover_every_product_once():
    groups = np.repeat(np.arange(8), 16)  # 8 article types of 16 products
    train_idx = np.arange(128)
    plain = grouped_batches(train_idx, None, 16, torch.Generator().manual_seed(0))
    grouped = grouped_batches(train_idx, groups, 16, torch.Generator().manual_seed(0))
    for batches in (plain, grouped):
        flat = torch.cat(batches).numpy()
        assert sorted(flat) == list(range(128))
    # a random batch of 16 from 8 groups almost surely spans several; a grouped one is one group
    assert max(len(set(groups[b.numpy()])) for b in plain) > 2
    assert all(len(set(groups[b.numpy()])) == 1 for b in grouped)
    again = grouped_batches(train_idx, groups, 16, torch.Generator().manual_seed(0))
    assert all((a == b).all() for a, b in zip(grouped, again))


def test_augmentation_moves_pixels_but_keeps_colours():
    x = torch.zeros((6, 3, 32, 32), dtype=torch.uint8)
    x[:, 0] = 200  # a red product ...
    x[:, :, :, :8] = 255  # ... on white, to the left
    out = augment(x, torch.Generator().manual_seed(1), min_scale=0.7)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert not torch.equal(out, x)  # flipped / cropped
    colours = {tuple(px) for px in out.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    # only the two colours and blends between them on the edge: red never turns into another hue
    assert all(g == b and (r == 200 and g == 0 or r >= 200 and g > 0) for r, g, b in colours), colours


def test_catalog_nce_counts_duplicate_titles_as_positives():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]), dim=-1)
    scale = torch.tensor(np.log(10.0))
    img = bank[[0]]  # the image sits exactly on its (duplicated) text
    own = torch.tensor([0])
    with_dups = catalog_nce(img, bank, own, scale)
    # the same image against a bank where the duplicate is a different (third) product's text
    bank2 = bank.clone()
    bank2[1] = torch.nn.functional.normalize(torch.tensor([0.99, 0.14, 0.0]), dim=0)
    without = catalog_nce(img, bank2, own, scale)
    # a duplicate is not pushed away as a negative: its target mass is shared, so the best achievable
    # loss is log(2) (half each), not the loss of an image that cannot tell two equal texts apart
    assert abs(float(with_dups) - float(np.log(2.0) + 0.0)) < 0.05
    assert float(without) > float(with_dups)


def test_group_by_a_missing_column_is_one_clear_error():
    import pandas as pd
    import pytest

    from mmpipeline.context import StageError
    from mmpipeline.embed.tower.train import product_groups

    class Lake:
        def read_pandas(self, name, columns):
            if "colour_family" in columns:
                raise KeyError("colour_family")
            return pd.DataFrame({"product_id": ["1", "2", "3"], "category_path": ["a > b", None, "a > b"]})

    products = pd.DataFrame({"product_id": ["1", "2", "3"]})
    assert product_groups(Lake(), products, None) is None
    g = product_groups(Lake(), products, "category_path")
    assert g[0] == g[2] != g[1]  # a product without a value is a group of its own
    with pytest.raises(StageError, match="embed.tower_group_by.*colour_family"):
        product_groups(Lake(), products, "colour_family")
