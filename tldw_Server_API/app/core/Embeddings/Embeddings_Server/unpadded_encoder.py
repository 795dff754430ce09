"""Unpadded forward pass for BERT-family encoders (BERT, MiniLM, RoBERTa, XLM-R):
the per-token work (QKV, attention output, feed-forward, layer norms), which is almost all of an
encoder's arithmetic, runs on the real tokens only, packed into one (tokens, hidden) matrix; only
attention itself sees the padded (rows, heads, longest, head) layout, under its key mask. A pass
mixing rows of different lengths then costs about what its real tokens cost, not rows x longest.
The weights are the loaded transformers model's own (QKV fused into one matrix at load), so the
vectors are those of `model(**batch).last_hidden_state` at the real positions.

Where every product runs on oneDNN (the CPU), the layer loop is one TorchScript call
(`layer_stack`): it holds no GIL between its operators, so the Python work of other threads (the
request path, the pipeline's storage and chunking, Chroma's GIL-holding writes) cannot stall a
pass; its states equal the op-by-op loop's bit for bit.

`unpadded_forward(model)` returns None for a model whose layers this does not reproduce exactly
(decoders, relative positions, cross-attention, other layer layouts); the caller then runs the
model as is. torch only; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "attention.output.LayerNorm", "intermediate.dense", "intermediate.intermediate_act_fn",
               "output.dense", "output.LayerNorm")
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert"}

def _part(layer: Any, path: str) -> Any:
    for name in path.split("."):
        layer = getattr(layer, name, None)
        if layer is None:
            return None
    return layer


def supports_unpadded(model: Any) -> bool:
    """Whether `model` is an encoder whose layers `unpadded_forward` reproduces exactly."""
    config = getattr(model, "config", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if config is None or layers is None or getattr(model, "embeddings", None) is None:
        return False
    return (getattr(config, "model_type", None) in ENCODER_TYPES
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False)
            and all(_part(layer, path) is not None for layer in layers for path in LAYER_PARTS))


# x (tokens, in) -> x @ weight.T + bias (tokens, out)
Linear = Callable[[Any], Any]


def packed_linear(weight: Any, bias: Any, dtype: Any = None, gelu: bool = False) -> Linear:
    """`F.linear` with `weight` (and `bias`) in `dtype` (default: their own), its input cast to it;
    with `gelu`, followed by the exact (erf) GELU, fused into the product where oneDNN runs it
    (one pass over the output, and the bf16 output rounded once, after the GELU).

    On the CPU the weight is reordered once into oneDNN's blocked layout
    (`mkldnn._reorder_linear_weight`, what torch's own compiler does for frozen CPU graphs): torch's
    plain fp32 `linear` goes to MKL's sgemm, which copies (packs) the whole weight on every call --
    on a 16-token pass about as much work as the product itself (perf on an AMD EPYC: 36 % of a
    lone pass in `sgemm_scopy`) -- and bf16's oneDNN matmul reorders it too. Measured on a 2-core
    AMD EPYC (Zen 4), 16 x 384 by 384 x 1536: fp32 197 -> 141 us, bf16 121 -> 79 us. Checked
    against `F.linear` when made (fp32: the same sums in another order); anything else (a GPU, a
    torch without oneDNN, a check that fails) keeps `F.linear`."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    dtype = dtype or weight.dtype
    weight, bias = weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype)

    def torch_linear(x: Any) -> Any:
        out = F.linear(x.to(dtype), weight, bias)
        return F.gelu(out) if gelu else out

    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return torch_linear
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)

        post_op, algorithm = ("gelu", "none") if gelu else ("none", "")   # "none": erf, not tanh

        def onednn_linear(x: Any) -> Any:
            return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, post_op, [], algorithm)

        onednn_linear.onednn = (packed, bias, post_op, algorithm)  # type: ignore[attr-defined]  # for `layer_stack`

        with torch.inference_mode():
            probe = torch.randn(5, weight.shape[1], generator=torch.Generator().manual_seed(0))
            got, want = onednn_linear(probe).float(), torch_linear(probe).float()
        scale = float(want.abs().max()) or 1.0
        tolerance = 1e-3 if dtype == torch.float32 else 1e-2   # bf16 GELU: rounded once, not twice
        if got.shape == want.shape and float((got - want).abs().max()) <= tolerance * scale:
            return onednn_linear
    except (RuntimeError, AttributeError, TypeError):
        pass
    return torch_linear


def held_weight_bytes(model: Any, dtype: Any = None) -> int:
    """Bytes of the weight copies `unpadded_forward(model, dtype)` holds beside the model's own:
    every linear weight of its layers (QKV fused, reordered for oneDNN), in `dtype` (default fp32)."""
    import torch

    size = torch.empty(0, dtype=dtype or torch.float32).element_size()
    return size * sum(module.weight.numel() for module in model.encoder.layer.modules()
                      if isinstance(module, torch.nn.Linear))


def token_rows(tokens: int) -> int:
    """Rows a pass's token matrix is padded to: `tokens` rounded up to a multiple of 8, or of an
    eighth of its power of two from 128 (48 sizes up to 2,048; waste <= 1/8 from 64 tokens). oneDNN makes (JIT
    compiles) a primitive per matrix shape, 0.15-1.6 ms each on a 2-core AMD EPYC, about what a
    16-token product itself costs; with few shapes its primitive cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    keeps them all (a warmed model's are made at warm-up: `UnpaddedEncoder.prime`), and its memory stays bounded."""
    step = max(8, 1 << max(0, tokens.bit_length() - 4))
    return -(-tokens // step) * step


_LAYER_STACK: list[Any] = []   # the TorchScript function, compiled once per process (`layer_stack`)


def _layer_stack_source() -> Callable[..., Any]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import Tensor

    def run_layers(x: Tensor, weights: list[Tensor], biases: list[Tensor], attrs: list[str], algorithms: list[str],
                   norms: list[Tensor], eps: list[float], dtype: torch.dtype, heads: int, rows: int, width: int,
                   tokens: int, dense: bool, real: Tensor, gather: Tensor, padding: Tensor,
                   key_mask: Tensor | None) -> Tensor:
        hidden = x.shape[1]
        head = hidden // heads
        size = x.shape[0]
        for layer in range(len(eps) // 2):
            w = n = 4 * layer   # four products a layer; two norms, a weight and a bias each
            qkv = torch.ops.mkldnn._linear_pointwise(x.to(dtype), weights[w], biases[w], attrs[w], [], algorithms[w])
            if dense:
                qkv = qkv[:tokens]
            else:
                spread = qkv.new_empty(rows * width, qkv.shape[1]).index_copy_(0, real, qkv[:tokens])
                qkv = spread.index_fill_(0, padding, 0)
            qkv5 = qkv.view(rows, width, 3, heads, head).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(qkv5[0], qkv5[1], qkv5[2], attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(rows * width, hidden)
            if not (dense and size == tokens):
                context = context.index_select(0, gather)
            out = torch.ops.mkldnn._linear_pointwise(context.to(dtype), weights[w + 1], biases[w + 1], attrs[w + 1],
                                                     [], algorithms[w + 1])
            attended = F.layer_norm(out + x, [hidden], norms[n], norms[n + 1], eps[2 * layer])
            inner = torch.ops.mkldnn._linear_pointwise(attended.to(dtype), weights[w + 2], biases[w + 2],
                                                       attrs[w + 2], [], algorithms[w + 2])
            out = torch.ops.mkldnn._linear_pointwise(inner.to(dtype), weights[w + 3], biases[w + 3], attrs[w + 3],
                                                     [], algorithms[w + 3])
            x = F.layer_norm(out + attended, [hidden], norms[n + 2], norms[n + 3], eps[2 * layer + 1])
        if dense:
            return x[:tokens]
        spread = x.new_empty(rows * width, hidden).index_copy_(0, real, x[:tokens])
        return spread.index_fill_(0, padding, 0)

    return run_layers


def layer_stack() -> Callable[..., Any] | None:
    """The encoder's layer loop compiled by TorchScript, or None where it cannot be. A scripted
    call runs every operator of the pass without the GIL; called op by op from Python, a pass
    takes the GIL back between operators (~100 per pass), so any thread running Python (the
    pipeline's storage, chunking and jobs DB, Chroma's writes, which hold the GIL) stalls it: a
    loop of torch ops beside a Python busy loop took 82x as long, the scripted loop the same."""
    if not _LAYER_STACK:
        try:
            import torch

            _LAYER_STACK.append(torch.jit.script(_layer_stack_source()))
        except Exception as exc:  # noqa: BLE001 - an optimisation: the Python loop stays
            from loguru import logger

            logger.warning("unpadded encoder: the layer loop could not be scripted ({}: {}); running it op by op",
                           type(exc).__name__, exc)
            _LAYER_STACK.append(None)
    return _LAYER_STACK[0]


def _then(linear: Linear, activation: Callable[[Any], Any]) -> Linear:
    return lambda x: activation(linear(x))


def row_sizes(max_tokens: int) -> list[int]:
    """Every `token_rows` size a pass of up to `max_tokens` real tokens runs on (40 up to 1,024)."""
    return sorted({token_rows(tokens) for tokens in range(1, max_tokens + 1)})


class UnpaddedEncoder:
    """`encoder(input_ids, attention_mask, token_type_ids, position_ids)`: the model's last hidden
    state computed on real tokens only; padded positions come back zero. With `dtype`
    (torch.bfloat16) the linear layers run in it, as under autocast: their input is cast, their
    weights are held in it (once), their output stays in it and joins the fp32 residual stream in
    fp32. Built by `unpadded_forward`."""

    scripted = True    # run the layer loop as one TorchScript call where it can (`layer_stack`)

    def __init__(self, model: Any, dtype: Any = None) -> None:
        import torch

        self.model = model
        self.heads = int(model.config.num_attention_heads)
        # BERT's "gelu" is the exact (erf) one; any other activation runs after the product
        gelu = getattr(model.config, "hidden_act", None) == "gelu"
        self.layers = []
        for layer in model.encoder.layer:
            attention = layer.attention.self
            qkv = packed_linear(torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]),
                                torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]), dtype)
            attention_out, output = (packed_linear(part.weight, part.bias, dtype)
                                     for part in (layer.attention.output.dense, layer.output.dense))
            intermediate = packed_linear(layer.intermediate.dense.weight, layer.intermediate.dense.bias, dtype,
                                         gelu=gelu)
            if not gelu:
                intermediate = _then(intermediate, layer.intermediate.intermediate_act_fn)
            self.layers.append((qkv, attention_out, intermediate, output, layer))
        self._stack = self._stack_operands(dtype)

    def _stack_operands(self, dtype: Any) -> dict[str, Any] | None:
        """The scripted layer loop's operands: every product on oneDNN (its packed weight, bias,
        post-op) and the layer norms' parameters; None (the Python loop) when a product is not
        on oneDNN, an activation runs after its product, or scripting is unavailable."""
        import torch

        products = [linear for qkv, out, inner, output, _ in self.layers for linear in (qkv, out, inner, output)]
        if not products or not all(hasattr(linear, "onednn") for linear in products) or layer_stack() is None:
            return None
        operands = [getattr(linear, "onednn") for linear in products]  # noqa: B009 - set by packed_linear
        norms = [norm for *_, layer in self.layers
                 for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]
        return {"weights": [o[0] for o in operands],
                "biases": [o[1] if o[1] is not None else torch.zeros(o[0].shape[0], dtype=o[0].dtype)
                           for o in operands],
                "attrs": [o[2] for o in operands], "algorithms": [o[3] for o in operands],
                "norms": [t.detach() for norm in norms for t in (norm.weight, norm.bias)],
                "eps": [float(norm.eps) for norm in norms], "dtype": dtype or torch.float32}

    def release_module_weights(self) -> int:
        """Drop the model's own linear weights in its layers (the encoder runs on its copies, and
        what a fallback product still needs it holds itself), so a loaded model does not hold its
        layers twice; the model's own forward cannot run afterwards. Returns the bytes released
        from the module (freed unless a product shares them)."""
        import torch

        released = 0
        for module in self.model.encoder.layer.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.numel():
                released += module.weight.numel() * module.weight.element_size()
                module.weight = torch.nn.Parameter(module.weight.new_empty(0), requires_grad=False)
        return released

    def prime(self, rows: int) -> None:
        """Run each of a layer's products once on a (`rows`, hidden) matrix of zeros, in the
        calling thread: oneDNN then makes (JIT compiles) the primitives a pass of that padded
        size (`token_rows`) needs at this thread's width, now rather than inside a request. Every
        layer has the same shapes, so layer 0's products cover them all. Call under
        torch.inference_mode, at the thread count the passes run on."""
        import torch

        qkv, attention_out, intermediate, output, _ = self.layers[0]
        x = torch.zeros(rows, int(self.model.config.hidden_size))
        qkv(x)
        attention_out(x)
        output(intermediate(x))

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any | None = None,
                 position_ids: Any | None = None) -> Any:
        import torch
        import torch.nn.functional as F  # noqa: N812

        heads, model = self.heads, self.model
        rows, width = input_ids.shape
        embedded = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        hidden_size = embedded.shape[-1]
        head_size = hidden_size // heads
        flat = embedded.reshape(-1, hidden_size)
        dense = bool(attention_mask.all())                           # nothing padded: positions = tokens
        real = attention_mask.reshape(-1).nonzero().squeeze(1)       # flat positions of real tokens
        tokens = int(real.numel())
        size = token_rows(tokens)
        # the (size, hidden) matrix the per-token layers run on: the real tokens, then repeats of the
        # first one up to `size` (computed alongside, never read back)
        gather = real if size == tokens else torch.cat([real, real[:1].expand(size - tokens)])
        key_mask = None if dense else attention_mask.bool()[:, None, None, :]   # (rows, 1, 1, width)
        padding = None if dense else (attention_mask.reshape(-1) == 0).nonzero().squeeze(1)

        def packed(positions: Any) -> Any:                           # (rows * width, c) -> (size, c)
            return positions if dense and size == tokens else positions.index_select(0, gather)

        def unpacked(matrix: Any) -> Any:                            # (size, c) -> (rows * width, c)
            if dense:
                return matrix[:tokens]
            # only the padded positions are zeroed (attention's masked keys and values must be
            # finite: a masked score weighs 0, and 0 x NaN is NaN), not the whole matrix first
            spread = matrix.new_empty(rows * width, matrix.shape[1]).index_copy_(0, real, matrix[:tokens])
            return spread.index_fill_(0, padding, 0)

        x = packed(flat)
        if self._stack is not None and self.scripted:
            states = layer_stack()(x, heads=heads, rows=rows, width=width, tokens=tokens, dense=dense, real=real,  # type: ignore[misc]
                                   gather=gather, padding=padding if padding is not None else real[:0],
                                   key_mask=key_mask, **self._stack)
            return states.view(rows, width, hidden_size)
        for qkv_linear, attention_out, intermediate, output, layer in self.layers:
            qkv = unpacked(qkv_linear(x))
            q, k, v = qkv.view(rows, width, 3, heads, head_size).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)   # (rows, heads, width, head)
            context = packed(context.transpose(1, 2).reshape(rows * width, hidden_size))
            attended = layer.attention.output.LayerNorm(attention_out(context) + x)
            x = layer.output.LayerNorm(output(intermediate(attended)) + attended)
        return unpacked(x).view(rows, width, hidden_size)


def unpadded_forward(model: Any, dtype: Any = None) -> UnpaddedEncoder | None:
    """The model's `UnpaddedEncoder` (linears in `dtype`, default the model's own), or None when
    the model is not one `supports_unpadded` accepts."""
    return UnpaddedEncoder(model, dtype) if supports_unpadded(model) else None
