"""The unembedding head: logits of the family, at a precision the measures can use."""

from __future__ import annotations

import pytest
import torch

from hf_repsim import Head


def test_a_bfloat16_head_gives_float32_logits_of_its_own_weights():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(50, 8, generator=gen).bfloat16(), torch.randn(50, generator=gen).bfloat16()
    features = torch.randn(20, 8, generator=gen)
    logits = Head(weight, bias).logits(features)
    assert logits.dtype == torch.float32
    exact = features.double() @ weight.double().T + bias.double()
    assert float((logits.double() - exact).abs().max()) < 1e-5  # a bfloat16 product would be off by ~1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wider_heads_keep_their_dtype(dtype):
    head = Head(torch.ones(3, 2, dtype=dtype))
    assert head.logits(torch.ones(4, 2)).dtype == dtype
