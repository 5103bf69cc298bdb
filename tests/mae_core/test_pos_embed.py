"""The fixed 2-D sin-cos tables against the paper's formula, computed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mae_core import create_model, sincos_2d
from tests.reference import reference_table


@pytest.mark.parametrize(("dim", "gh", "gw"), [(32, 4, 4), (16, 3, 5), (64, 7, 7)])
def test_table_matches_formula(dim: int, gh: int, gw: int) -> None:
    table = sincos_2d(dim, (gh, gw)).numpy()
    assert table.shape == (1 + gh * gw, dim)
    np.testing.assert_allclose(table, reference_table(dim, gh, gw), atol=1e-6)


def test_class_row_is_zero_and_first_half_encodes_columns() -> None:
    t = sincos_2d(16, 4)
    assert torch.count_nonzero(t[0]) == 0
    patches = t[1:].reshape(4, 4, 16)
    # Along a row (fixed h) the second half is constant; along a column the first half is.
    assert torch.allclose(patches[2, :, 8:], patches[2, :1, 8:].expand(4, 8))
    assert torch.allclose(patches[:, 1, :8], patches[:1, 1, :8].expand(4, 8))
    assert not torch.allclose(patches[2, 0, :8], patches[2, 1, :8])


def test_model_tables_are_the_paper_tables() -> None:
    model = create_model("mae_vit_tiny_patch8")
    np.testing.assert_allclose(model.pos_embed[0].numpy(), reference_table(192, 8, 8), atol=1e-6)
    np.testing.assert_allclose(
        model.decoder_pos_embed[0].numpy(), reference_table(128, 8, 8), atol=1e-6
    )


def test_width_not_divisible_by_four_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(18, 4)
