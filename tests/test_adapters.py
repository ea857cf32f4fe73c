"""CausalLMAdapter, reparametrize and requantize on tiny random models of each supported architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from hf_repsim.adapters import (
    CausalLMAdapter,
    ReconstructionError,
    output_layer,
    random_invertible,
    reparametrize,
    requantize,
)
from hf_repsim.heads import Head

VOCAB = 128
HIDDEN = 32
# float32 matmuls of a 32-wide dot product agree to ~1e-7; the adapter's own check allows 1e-4.
FLOAT32_TOLERANCE = 1e-4
# float64 round-off through A and A^{-1} (condition number 10) stays far below this.
FLOAT64_TOLERANCE = 1e-10
# Q4_0 perturbs weights by a few percent; on these tiny models the mean KL stays well below this.
QUANTIZED_KL_LIMIT = 1e-2

_LLAMA_LIKE = {
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
_GEMMA_LIKE = {**_LLAMA_LIKE, "head_dim": 8}
# Config arguments per architecture (transformers 5.x names); every model has 2 layers and hidden 32.
ARCHITECTURES = {
    "gpt2": {"n_embd": HIDDEN, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt_neox": {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    # The decoder works at width 64 and projects to 32 before the (tied) output layer.
    "opt": {
        "hidden_size": 64,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": HIDDEN,
    },
    "phi": {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "gemma": _GEMMA_LIKE,
    # A cap of 0.5 bites: these logits reach about 0.3.
    "gemma2": {**_GEMMA_LIKE, "query_pre_attn_scalar": 8, "sliding_window": 16, "final_logit_softcapping": 0.5},
    "cohere": {**_LLAMA_LIKE, "logit_scale": 0.3},
    "granite": {**_LLAMA_LIKE, "logits_scaling": 3.0},
    "falcon": {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4},
    "bloom": {"hidden_size": HIDDEN, "n_layer": 2, "n_head": 4},
}
TIED = {"gpt2", "opt", "gemma", "gemma2", "cohere", "falcon", "bloom"}


def tiny_model(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random 2-layer causal LM; an output bias (phi) is made non-zero so that it matters."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, **ARCHITECTURES[model_type]
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    bias = output_layer(model).bias
    if bias is not None:
        with torch.no_grad():
            bias.normal_(std=0.1)
    return model.to(dtype)


def token_batch(seed: int = 0, batch: int = 3, seq: int = 9) -> torch.Tensor:
    """(batch, seq) random ids, avoiding the special ids 0..2."""
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_logits_are_reconstructed_from_the_output_layer_input(model_type):
    model = tiny_model(model_type)
    ids = token_batch()
    with CausalLMAdapter(model) as adapter:
        features, logits = adapter.forward(ids)
    expected = model(ids).logits
    cap = adapter.info["softcap"]
    if cap is not None:
        expected = torch.atanh(expected / cap) * cap

    assert features.shape == (3, 9, HIDDEN) and logits.shape == (3, 9, VOCAB)
    assert features.dtype == logits.dtype == torch.float32
    assert adapter.info["max_reconstruction_error"] < FLOAT32_TOLERANCE
    assert (logits - expected).abs().max() < FLOAT32_TOLERANCE
    # The logits are the model's own where it computes them in float32 (a logit scale rounds differently).
    torch.testing.assert_close(adapter.head.logits(features), logits, rtol=1e-6, atol=1e-6)
    assert adapter.info["model_type"] == model_type
    assert adapter.info["hidden_size"] == HIDDEN and adapter.info["num_labels"] == VOCAB
    assert adapter.info["tied"] == (model_type in TIED)
    assert adapter.info["softcap"] == (0.5 if model_type == "gemma2" else None)
    assert (adapter.head.bias is not None) == (model_type == "phi")
    assert len(adapter.info["padded_rows"]) == 0


def test_features_are_the_output_layer_input_not_the_decoder_width():
    """OPT's decoder is 64 wide and projects to 32 before the output layer: f is the 32-wide projection."""
    model = tiny_model("opt")
    ids = token_batch()
    with CausalLMAdapter(model) as adapter:
        features, _ = adapter.forward(ids)

    assert model.config.hidden_size == 64 and features.shape[-1] == adapter.info["hidden_size"] == HIDDEN
    assert torch.allclose(features, model.model.decoder(ids).last_hidden_state, atol=1e-6)


def test_padding_is_ignored_by_the_check_and_kept_in_the_shapes():
    model = tiny_model("llama")
    ids = token_batch()
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with CausalLMAdapter(model) as adapter:
        _, logits = adapter.forward(ids, attention_mask=mask)
    assert logits.shape == (3, 9, VOCAB)
    assert adapter.info["max_reconstruction_error"] < FLOAT32_TOLERANCE


def test_soft_capping_is_flagged_and_pre_cap_logits_returned():
    model = tiny_model("gemma2")
    ids = token_batch()
    with CausalLMAdapter(model) as adapter:
        _, logits = adapter.forward(ids)
    capped = model(ids).logits

    assert adapter.info["softcap"] == 0.5
    # The cap changes the logits visibly, and reapplying it to the returned ones gives the model's.
    assert (logits - capped).abs().max() > 1e-2
    assert torch.allclose(0.5 * torch.tanh(logits / 0.5), capped, atol=FLOAT32_TOLERANCE)


@pytest.mark.parametrize(("model_type", "scale"), [("cohere", 0.3), ("granite", 1 / 3)])
def test_logit_scale_is_folded_into_the_head(model_type, scale):
    """Cohere multiplies its logits by logit_scale = 0.3, Granite divides them by logits_scaling = 3."""
    model = tiny_model(model_type)
    ids = token_batch()
    with CausalLMAdapter(model) as adapter:
        features, logits = adapter.forward(ids)
    unscaled = output_layer(model)(features)

    assert adapter.info["logit_scale"] == pytest.approx(scale)
    assert torch.allclose(adapter.head.weight, scale * output_layer(model).weight)
    assert (logits - unscaled).abs().max() > 1e-2
    assert torch.allclose(logits, model(ids).logits, atol=1e-6)
    assert torch.allclose(features @ adapter.head.weight.T, logits, atol=1e-6)


@pytest.mark.parametrize("model_type", ["gpt2", "phi"])
def test_padded_vocabulary_rows_are_excluded(model_type):
    model = tiny_model(model_type)
    ids = token_batch(seq=5)
    with CausalLMAdapter(model, num_tokens=100) as adapter:
        _, logits = adapter.forward(ids)

    assert adapter.info["padded_rows"] == range(100, VOCAB)
    assert adapter.info["num_labels"] == adapter.head.num_labels == 100
    assert adapter.info["num_output_rows"] == VOCAB
    assert adapter.head.bias is None or adapter.head.bias.shape == (100,)
    assert logits.shape == (3, 5, 100)
    assert torch.allclose(logits, model(ids).logits[..., :100], atol=1e-6)


@pytest.mark.parametrize("num_tokens", [0, VOCAB + 1])
def test_num_tokens_outside_the_output_rows_is_refused(num_tokens):
    with pytest.raises(ValueError, match="num_tokens"):
        CausalLMAdapter(tiny_model("llama"), num_tokens=num_tokens)


def test_a_noisy_output_layer_raises_naming_the_architecture():
    model = tiny_model("qwen2")
    generator = torch.Generator().manual_seed(0)
    output_layer(model).register_forward_hook(
        lambda module, args, out: out + 1e-2 * torch.randn(out.shape, generator=generator)
    )
    with CausalLMAdapter(model) as adapter, pytest.raises(ReconstructionError, match="qwen2.*error of"):
        adapter.forward(token_batch())
    assert adapter.info["max_reconstruction_error"] > FLOAT32_TOLERANCE


def test_a_looser_tolerance_accepts_the_same_noise():
    model = tiny_model("qwen2")
    output_layer(model).register_forward_hook(lambda module, args, out: out + 1e-3)
    with CausalLMAdapter(model, tolerance=1e-2) as adapter:
        adapter.forward(token_batch())
    assert adapter.info["max_reconstruction_error"] == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_pass_the_default_check(dtype):
    """The model rounds its logits to its dtype; the check allows for that, and the outputs are float32."""
    model = tiny_model("cohere", dtype=dtype)
    with CausalLMAdapter(model) as adapter:
        features, logits = adapter.forward(token_batch())
    assert features.dtype == logits.dtype == adapter.head.weight.dtype == torch.float32
    assert 0 < adapter.info["max_reconstruction_error"] < 4 * torch.finfo(dtype).eps


def test_copies_do_not_inherit_the_hook_of_an_open_adapter():
    model = tiny_model("gpt2")
    with CausalLMAdapter(model):
        for twin in (requantize(model, "q8_0"), reparametrize(model, torch.eye(HIDDEN))):
            assert not any(module._forward_pre_hooks for module in twin.modules())


def test_close_removes_the_hook_and_refuses_further_use():
    model = tiny_model("llama")
    adapter = CausalLMAdapter(model)
    adapter.close()
    assert not output_layer(model)._forward_pre_hooks
    with pytest.raises(RuntimeError, match="closed"):
        adapter.forward(token_batch())


@pytest.mark.parametrize("seed", [0, 1])
def test_random_invertible_has_the_requested_condition_number(seed):
    A = random_invertible(16, 50.0, seed=seed)
    singular_values = torch.linalg.svdvals(A)
    assert A.dtype == torch.float64
    assert singular_values.max().item() == pytest.approx(50.0) and singular_values.min().item() == pytest.approx(1.0)
    assert torch.equal(A, random_invertible(16, 50.0, seed=seed))
    assert not torch.equal(A, random_invertible(16, 50.0, seed=seed + 1))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_reparametrized_twin_has_the_same_distribution_in_other_coordinates(model_type):
    model = tiny_model(model_type, dtype=torch.float64)
    ids = token_batch()
    A = random_invertible(HIDDEN, 10.0, seed=1)
    twin = reparametrize(model, A)
    with CausalLMAdapter(model) as adapter, CausalLMAdapter(twin) as twin_adapter:
        features, logits = adapter.forward(ids)
        twin_features, twin_logits = twin_adapter.forward(ids)

    # (batch, seq, hidden) @ A^T: the column-vector map f -> A f on every row.
    assert torch.allclose(twin_features, features @ A.T, rtol=0, atol=FLOAT64_TOLERANCE)
    assert torch.allclose(
        twin_adapter.head.weight, adapter.head.weight @ torch.linalg.inv(A), rtol=0, atol=FLOAT64_TOLERANCE
    )
    assert torch.allclose(
        torch.log_softmax(twin_logits, -1), torch.log_softmax(logits, -1), rtol=0, atol=FLOAT64_TOLERANCE
    )
    assert torch.allclose(
        torch.log_softmax(twin(ids).logits, -1),
        torch.log_softmax(model(ids).logits, -1),
        rtol=0,
        atol=FLOAT64_TOLERANCE,
    )
    assert twin_adapter.info["max_reconstruction_error"] < FLOAT64_TOLERANCE
    assert twin_adapter.info["tied"] is False and not twin.config.tie_word_embeddings
    assert twin_adapter.info["logit_scale"] == adapter.info["logit_scale"]


@pytest.mark.parametrize("model_type", ["gemma", "phi"])
def test_reparametrize_leaves_the_original_and_the_input_embedding_alone(model_type):
    model = tiny_model(model_type)
    weight = output_layer(model).weight.detach().clone()
    embedding = model.get_input_embeddings().weight.detach().clone()
    twin = reparametrize(model, random_invertible(HIDDEN, 5.0, seed=0, dtype=torch.float32))

    assert torch.equal(output_layer(model).weight, weight)
    assert torch.equal(twin.get_input_embeddings().weight, embedding)
    assert not torch.equal(output_layer(twin).weight, weight)
    with CausalLMAdapter(twin) as adapter:
        adapter.forward(token_batch())
    assert adapter.info["max_reconstruction_error"] < FLOAT32_TOLERANCE


def test_reparametrizing_twice_composes_the_maps():
    model = tiny_model("llama", dtype=torch.float64)
    A, B = random_invertible(HIDDEN, 4.0, seed=0), random_invertible(HIDDEN, 4.0, seed=1)
    ids = token_batch()
    with CausalLMAdapter(model) as adapter, CausalLMAdapter(reparametrize(reparametrize(model, A), B)) as twice:
        features, _ = adapter.forward(ids)
        twice_features, _ = twice.forward(ids)
    assert torch.allclose(twice_features, features @ (B @ A).T, rtol=0, atol=FLOAT64_TOLERANCE)


@pytest.mark.parametrize("A", [torch.eye(HIDDEN + 1), torch.zeros(HIDDEN, HIDDEN)], ids=["wrong-shape", "singular"])
def test_reparametrize_refuses_a_bad_matrix(A):
    with pytest.raises(ValueError, match="Expected"):
        reparametrize(tiny_model("llama"), A)


def _mean_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean over (batch, seq) of KL(p || q) for (batch, seq, vocab) logits."""
    log_p, log_q = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_q4_0_requantization_changes_weights_but_keeps_the_distribution_close(model_type):
    model = tiny_model(model_type)
    ids = token_batch()
    quantized = requantize(model, "q4_0")
    with CausalLMAdapter(model) as adapter, CausalLMAdapter(quantized) as quantized_adapter:
        _, logits = adapter.forward(ids)
        _, quantized_logits = quantized_adapter.forward(ids)
    kl = _mean_kl(logits, quantized_logits)

    assert not torch.equal(quantized_adapter.head.weight, adapter.head.weight)
    assert torch.equal(quantized.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert quantized.requantization["kind"] == "q4_0" and quantized.requantization["num_quantized"] > 0
    assert 0 < kl < QUANTIZED_KL_LIMIT
    assert quantized_adapter.info["max_reconstruction_error"] < FLOAT32_TOLERANCE


def test_requantization_error_shrinks_with_more_bits_and_odd_widths_are_skipped():
    model = tiny_model("gpt_neox")
    # A 40-wide input is not a multiple of the 32-wide GGUF blocks.
    model.gpt_neox.layers[0].mlp.dense_4h_to_h = torch.nn.Linear(40, HIDDEN)
    weight = output_layer(model).weight
    errors = {}
    for kind in ["q4_0", "q4_1", "q5_0", "q8_0"]:
        quantized = requantize(model, kind)
        errors[kind] = (output_layer(quantized).weight - weight).abs().max().item()
        assert quantized.requantization["skipped"] == ["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"]
        assert torch.equal(
            quantized.gpt_neox.layers[0].mlp.dense_4h_to_h.weight, model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight
        )
    assert errors["q8_0"] < errors["q5_0"] < errors["q4_0"]
    assert 0 < errors["q8_0"]


def test_requantize_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="q4_0"):
        requantize(tiny_model("llama"), "q3_k")


def test_head_is_a_head():
    with CausalLMAdapter(tiny_model("phi")) as adapter:
        assert isinstance(adapter.head, Head) and adapter.head.weight.dtype == torch.float32
