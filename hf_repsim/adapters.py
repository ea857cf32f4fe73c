"""Read a Hugging Face causal LM as a model of the family p(y|x) = softmax_y(f(x)^T g(y) + b(y)).

``CausalLMAdapter`` captures f at the input of the output layer and reads g (and b) from its weight,
folding in a logit scale and dropping padded vocabulary rows; every forward pass checks that
f W^T + b reproduces the model's own logits. ``reparametrize`` and ``requantize`` build test twins of
a model: the same distribution in other coordinates, and a GGUF round trip of its weights.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D
from typing_extensions import Self

from hf_repsim.heads import Head

logger = logging.getLogger(__name__)

QuantKind = Literal["q8_0", "q4_0", "q4_1", "q5_0"]
QUANT_KINDS: tuple[str, ...] = get_args(QuantKind)

# The check of the logits allows this many machine epsilons of the model's logits dtype, relative to
# max(1, max |logits|): the model rounds its matmul, logit scale and soft-cap to that dtype, f W^T + b does not.
OUTPUT_ROUNDING = 4

# Rows of every batch on which f W^T + b is checked against the model's logits when those are already in the
# adapter's dtype (the full product is recomputed, and checked, for soft-capped or half-precision logits).
CHECK_ROWS = 64

# Reparametrizations whose condition number exceeds this are refused: A^{-1} would lose the digits of g.
MAX_CONDITION_NUMBER = 1e10


class ReconstructionError(RuntimeError):
    """f W^T + b (with the logit scale and soft-cap) does not reproduce the model's logits."""


class ReparametrizedOutput(nn.Module):
    """An output layer that maps the features by A before an unembedding with weight W A^{-1}.

    Built by ``reparametrize``: the model's distribution is unchanged, while the features entering
    ``unembedding`` (which ``output_layer`` returns) are A f and its rows are A^{-T} g.

    Attributes:
        transform: Linear (hidden -> hidden) without bias, weight A.
        unembedding: Linear (hidden -> n_rows), weight W A^{-1}, the original bias.
    """

    def __init__(self, transform: torch.Tensor, unembedding: nn.Linear) -> None:
        super().__init__()
        hidden = unembedding.in_features
        self.transform = nn.Linear(hidden, hidden, bias=False, device=transform.device, dtype=transform.dtype)
        with torch.no_grad():
            self.transform.weight.copy_(transform)
        self.unembedding = unembedding

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch, seq, hidden) -> (batch, seq, hidden) -> (batch, seq, n_rows)
        return self.unembedding(self.transform(hidden_states))


def output_layer(model: nn.Module) -> nn.Module:
    """The module whose input is f and whose weight rows are g.

    That is ``model.get_output_embeddings()``, or its ``unembedding`` when ``reparametrize`` wrapped it.

    Raises:
        NotImplementedError: the model has no output embedding with a 2-d weight.
    """
    layer = model.get_output_embeddings()
    if isinstance(layer, ReparametrizedOutput):
        layer = layer.unembedding
    if layer is None or getattr(layer, "weight", None) is None or layer.weight.ndim != 2:
        raise NotImplementedError(
            f"{type(model).__name__} has no output embedding with a (n_rows, hidden) weight "
            f"(get_output_embeddings() returned {type(layer).__name__}); only causal LMs with a linear "
            "output layer are supported."
        )
    return layer


def logit_scale(config) -> float:
    """The factor the architecture multiplies the output layer's logits by (1.0 for most).

    Cohere multiplies by ``config.logit_scale``; Granite divides by ``config.logits_scaling``.
    """
    config = config.get_text_config()
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        scale /= float(config.logits_scaling)
    return scale


def final_softcap(config) -> float | None:
    """The final-logit soft-cap c (logits -> c tanh(logits / c), Gemma 2), or None without one."""
    cap = getattr(config.get_text_config(), "final_logit_softcapping", None)
    return None if cap is None else float(cap)


class _Capture:
    """Forward pre-hook keeping the last input of the module it is registered on."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.features = args[0] if args else next(iter(kwargs.values()))


class CausalLMAdapter:
    """A causal LM read as f (the input of its output layer) and g, b (the output layer's rows).

    logits(y | x) = f(x)^T g(y) + b(y), with any logit scale folded into g and b. Final-logit
    soft-capping (Gemma 2: c tanh(z / c)) leaves the family: it is flagged in ``info["softcap"]`` and
    the adapter returns the pre-cap logits z. The head is read at construction, and shares memory with the
    output layer's weight when no scale or upcast applies: change neither while an adapter is open.

    Args:
        model: a transformers causal LM (``model.get_output_embeddings()`` is a linear layer).
        num_tokens: the tokenizer's length; output rows from ``num_tokens`` on are padding and are
            dropped from the head and the logits. None keeps every row.
        tolerance: largest accepted max |f W^T + b - model logits|, relative to max(1, max |logits|).
            Never tighter than ``OUTPUT_ROUNDING`` machine epsilons of the model's logits dtype: a bfloat16
            model rounds its own logits by that much.

    Attributes:
        head: the ``Head`` (g, b), (n_labels, hidden), at least float32, on the output layer's device.
        info: model_type, hidden_size, num_labels, num_output_rows, logit_scale (the multiplier folded
            into the head), softcap (None or c), padded_rows (a range of row indices, empty if none),
            tied (output weight shared with the input embedding), max_reconstruction_error (running
            max over forward calls; None before the first).

    Raises:
        ValueError: ``num_tokens`` is not in [1, n_rows].

    Example:
        >>> from transformers import AutoConfig, AutoModelForCausalLM
        >>> config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2)
        >>> with CausalLMAdapter(AutoModelForCausalLM.from_config(config).eval(), num_tokens=60) as adapter:
        ...     features, logits = adapter.forward(torch.tensor([[1, 2, 3]]))
        >>> tuple(features.shape), tuple(logits.shape)
        ((1, 3, 16), (1, 3, 60))
    """

    def __init__(self, model: nn.Module, *, num_tokens: int | None = None, tolerance: float = 1e-4) -> None:
        self.model = model
        self.tolerance = tolerance
        layer = output_layer(model)
        n_rows = layer.weight.shape[0]
        if num_tokens is not None and not 1 <= num_tokens <= n_rows:
            raise ValueError(
                f"Expected num_tokens (the tokenizer's length) in [1, {n_rows}], the output layer's rows, got "
                f"{num_tokens}; a tokenizer longer than the output layer does not belong to this model."
            )
        num_labels = n_rows if num_tokens is None else num_tokens
        self._softcap = final_softcap(model.config)
        scale = logit_scale(model.config)

        # All rows (padded ones included) reconstruct the model's logits; the head keeps the first num_labels.
        self._dtype = torch.promote_types(layer.weight.dtype, torch.float32)
        self._weight = _scaled(layer.weight, scale, self._dtype)
        self._bias = None if getattr(layer, "bias", None) is None else _scaled(layer.bias, scale, self._dtype)
        bias = None if self._bias is None else self._bias[:num_labels]
        self.head = Head(weight=self._weight[:num_labels], bias=bias)

        embeddings = model.get_input_embeddings()
        self.info = {
            "model_type": model.config.model_type,
            "hidden_size": layer.weight.shape[1],
            "num_labels": num_labels,
            "num_output_rows": n_rows,
            "logit_scale": scale,
            "softcap": self._softcap,
            "padded_rows": range(num_labels, n_rows),
            "tied": embeddings is not None and _same_storage(layer.weight, embeddings.weight),
            "max_reconstruction_error": None,
        }
        if self._softcap is not None:
            logger.info("%s soft-caps its logits at %g: outside the family.", self.info["model_type"], self._softcap)
        self._capture = _Capture()
        self._handle = layer.register_forward_pre_hook(self._capture, with_kwargs=True)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model once; return f and the in-family (pre-cap) logits, checked against the model's.

        Args:
            input_ids: (batch, seq) token ids.
            attention_mask: (batch, seq) 1 for tokens, 0 for padding; None for no padding.

        Returns:
            features: (batch, seq, hidden), the output layer's input, at least float32.
            logits: (batch, seq, n_labels) = features @ head.weight.T + head.bias, at least float32.

        Raises:
            ReconstructionError: the logits of the family differ from the model's beyond ``tolerance``.
            RuntimeError: the model's forward never called its output layer.
        """
        if self._handle is None:
            raise RuntimeError("This CausalLMAdapter is closed; open a new one on the model.")
        if self.model.training:
            warnings.warn("The model is in training mode: dropout makes f random; call model.eval().", stacklevel=2)
        self._capture.features = None
        with torch.no_grad():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        captured, self._capture.features = self._capture.features, None
        if captured is None:
            raise RuntimeError(
                f"{self.info['model_type']}: the forward pass never called the output layer, so f was not captured."
            )

        features = captured.detach().to(self._dtype)  # (batch, seq, hidden)
        model_logits = output.logits.detach()  # (batch, seq, n_rows), padded rows included
        if self._softcap is None and model_logits.dtype == self._dtype:
            # The model's own logits are f W^T + b (scale included) in our dtype: keep them, and check the
            # reconstruction on a few rows instead of a second full product with the vocabulary.
            rows = features.reshape(-1, features.shape[-1])[:CHECK_ROWS]  # (check, hidden)
            self._check(
                F.linear(rows, self._weight, self._bias), model_logits.reshape(-1, model_logits.shape[-1])[:CHECK_ROWS]
            )
            logits = model_logits
        else:
            # Soft-capped or lower-precision logits: recompute f W^T + b in full, at least float32.
            logits = F.linear(features, self._weight, self._bias)
            self._check(logits, model_logits)
        return features, logits[..., : self.info["num_labels"]]

    __call__ = forward

    def _check(self, logits: torch.Tensor, model_logits: torch.Tensor) -> None:
        """Compare (batch, seq, n_rows) family logits, capped like the model, with the model's logits."""
        expected = logits if self._softcap is None else self._softcap * torch.tanh(logits / self._softcap)
        if expected.shape != model_logits.shape:
            raise ReconstructionError(
                f"{self.info['model_type']}: expected the model's logits to have shape {tuple(expected.shape)} "
                f"like f W^T + b, got {tuple(model_logits.shape)}."
            )
        relative = max(self.tolerance, OUTPUT_ROUNDING * torch.finfo(model_logits.dtype).eps)
        model_logits = model_logits.detach().to(self._dtype)
        error = (expected - model_logits).abs().max().item()
        previous = self.info["max_reconstruction_error"]
        self.info["max_reconstruction_error"] = error if previous is None else max(previous, error)
        limit = relative * max(1.0, model_logits.abs().max().item())
        if not error <= limit:
            raise ReconstructionError(
                f"{self.info['model_type']}: f W^T + b (logit scale {self.info['logit_scale']:g}, soft-cap "
                f"{self._softcap}) reproduces the model's logits only to a max absolute error of {error:.3g}; "
                f"expected at most {limit:.3g} ({relative:.3g} x max(1, max |logits|)). The architecture may "
                "transform its logits after the output layer in a way hf_repsim does not know; pass a larger "
                "tolerance only if the difference is rounding."
            )

    def close(self) -> None:
        """Remove the hook from the model's output layer."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _scaled(tensor: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``tensor * scale`` detached, in ``dtype``; no copy when neither changes anything."""
    tensor = tensor.detach().to(dtype)
    return tensor if scale == 1.0 else tensor * scale


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.device == b.device and a.data_ptr() == b.data_ptr())


def _untie(model: nn.Module) -> None:
    """Give the output layer its own weight, so that changing it leaves the input embedding as is."""
    layer = output_layer(model)
    embeddings = model.get_input_embeddings()
    if embeddings is not None and _same_storage(layer.weight, embeddings.weight):
        layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=layer.weight.requires_grad)

    # Keep transformers from tying them again (tie_weights, save_pretrained / from_pretrained).
    for config in (model.config, model.config.get_text_config()):
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def random_invertible(hidden: int, cond: float, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random (hidden, hidden) matrix U diag(s) V^T with condition number ``cond``.

    U and V are Haar-random orthogonal matrices; the singular values s run geometrically from 1 to cond.

    Args:
        hidden: the size M of the features.
        cond: the condition number, >= 1.
        seed: seed of the generator; same seed, same matrix.
        dtype: dtype of the result.

    Returns:
        (hidden, hidden) invertible matrix.

    Example:
        >>> round(torch.linalg.cond(random_invertible(8, 10.0, seed=0)).item(), 6)
        10.0
    """
    if not cond >= 1.0 or not math.isfinite(cond):
        raise ValueError(f"Expected a finite condition number cond >= 1, got {cond}.")
    generator = torch.Generator().manual_seed(seed)
    singular_values = cond ** torch.linspace(0.0, 1.0, hidden, dtype=torch.float64)
    u, v = (_random_orthogonal(hidden, generator) for _ in range(2))
    # U diag(s) V^T: scaling U's columns by s
    return ((u * singular_values) @ v.T).to(dtype)


def _random_orthogonal(size: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random (size, size) orthogonal matrix: Q of a Gaussian matrix, signs fixed by R's diagonal."""
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def reparametrize(model: nn.Module, A: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with f -> A f and g -> A^{-T} g: the same distribution in other coordinates.

    The copy's output layer becomes a ``ReparametrizedOutput``: a linear map A, then an unembedding with
    weight W A^{-1} (row g(y) -> A^{-T} g(y)) and the original bias, so that logits = (A f)^T (A^{-T} g)
    + b are unchanged. ``output_layer`` (and so ``CausalLMAdapter``) reads the new unembedding: f' = A f.
    Tied weights are untied; the input embedding and ``model`` stay as they are. Reparametrizing a
    reparametrized model composes the maps. The new weights are computed in float64 and stored in the
    output layer's dtype.

    Args:
        model: a transformers causal LM.
        A: (hidden, hidden) invertible matrix, hidden being the output layer's input size.

    Returns:
        A deep copy of ``model`` with the reparametrized output layer.

    Raises:
        ValueError: A has the wrong shape, is not finite, or its condition number exceeds
            ``MAX_CONDITION_NUMBER``.
    """
    layer = output_layer(model)
    n_rows, hidden = layer.weight.shape
    a = _checked_invertible(A, hidden)

    # W A^{-1} = (A^{-T} W^T)^T: (n_rows, hidden)
    new_weight = torch.linalg.solve(a.T, layer.weight.detach().to(device="cpu", dtype=torch.float64).T).T
    twin = _copy(model)
    previous = twin.get_output_embeddings()
    if isinstance(previous, ReparametrizedOutput):
        a = a @ previous.transform.weight.detach().to(device="cpu", dtype=torch.float64)

    # A fresh unembedding: the (possibly tied) old weight, and so the input embedding, is left alone.
    old = output_layer(twin)
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    unembedding = nn.Linear(hidden, n_rows, bias=getattr(old, "bias", None) is not None, **factory)
    with torch.no_grad():
        unembedding.weight.copy_(new_weight)
        if unembedding.bias is not None:
            unembedding.bias.copy_(old.bias)
    twin.set_output_embeddings(ReparametrizedOutput(a.to(**factory), unembedding))
    if output_layer(twin) is not unembedding:
        raise NotImplementedError(
            f"{type(model).__name__}.set_output_embeddings did not install the new output layer."
        )
    _untie(twin)
    return twin


def _checked_invertible(A: torch.Tensor, hidden: int) -> torch.Tensor:
    """A as a float64 CPU (hidden, hidden) matrix, after checking its shape and condition number."""
    if tuple(A.shape) != (hidden, hidden):
        raise ValueError(
            f"Expected A of shape ({hidden}, {hidden}), the output layer's input size, got {tuple(A.shape)}."
        )
    a = A.detach().to(device="cpu", dtype=torch.float64)
    cond = torch.linalg.cond(a).item() if torch.isfinite(a).all() else math.inf
    if not cond <= MAX_CONDITION_NUMBER:
        raise ValueError(
            f"Expected an invertible A with condition number <= {MAX_CONDITION_NUMBER:g}, got {cond:.3g}."
        )
    return a


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the capture hooks of adapters open on the original."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for key in [key for key, hook in module._forward_pre_hooks.items() if isinstance(hook, _Capture)]:
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)
    return twin


def requantize(model: nn.Module, kind: QuantKind) -> nn.Module:
    """A copy of ``model`` whose linear weights went through a GGUF block quantization and back.

    Every ``nn.Linear`` weight, every transformers ``Conv1D`` weight (GPT-2's linear layers, stored
    transposed) and the output layer's weight is quantized with ``gguf.quants.quantize`` along its input
    dimension and dequantized, in float32 numpy, then cast back to its dtype. Weights whose input size is
    not a multiple of the block size (32) are left as is. Biases, norms and the input embedding are
    unchanged (tied weights are untied first). What was done is in the copy's ``requantization`` attribute:
    ``{"kind", "num_quantized", "num_skipped", "skipped"}`` (``skipped``: the names of the weights left as is).

    Args:
        model: a transformers causal LM.
        kind: the GGUF block format, one of ``QUANT_KINDS``.

    Returns:
        The requantized deep copy of ``model``.

    Raises:
        ValueError: unknown ``kind``.
        ImportError: the ``gguf`` package is missing (``pip install hf_repsim[gguf]``).
    """
    if kind not in QUANT_KINDS:
        raise ValueError(f"Expected kind to be one of {QUANT_KINDS}, got {kind!r}.")
    try:
        import gguf
    except ImportError as error:
        raise ImportError("requantize needs the gguf package: pip install 'hf_repsim[gguf]'.") from error
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]

    twin = _copy(model)
    _untie(twin)
    output = output_layer(twin)
    done, skipped = set(), []
    for name, module in twin.named_modules():
        if not (isinstance(module, (nn.Linear, Conv1D)) or module is output) or id(module.weight) in done:
            continue
        done.add(id(module.weight))
        # (out_features, in_features): GGUF blocks run along the input dimension.
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight
        if weight.shape[-1] % block_size != 0:
            skipped.append(f"{name}.weight")
            continue
        with torch.no_grad():
            weight.copy_(_round_trip(weight, qtype, gguf))
    twin.requantization = {
        "kind": kind,
        "num_quantized": len(done) - len(skipped),
        "num_skipped": len(skipped),
        "skipped": skipped,
    }
    logger.info("requantize(%s): %d weights quantized, %d skipped.", kind, len(done) - len(skipped), len(skipped))
    return twin


def _round_trip(weight: torch.Tensor, qtype, gguf) -> torch.Tensor:
    """(out, in) weight -> GGUF blocks -> (out, in) float32 tensor on the weight's device."""
    array = weight.detach().to(device="cpu", dtype=torch.float32).numpy()
    restored = gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype)
    return torch.from_numpy(np.ascontiguousarray(restored)).to(weight.device)
