"""FP8 layers for the language model (--quantization fp8, compute capability 8.9+): linear products in
float8 e4m3 on FP8 tensor cores, weights scaled per output channel, activations per token.

    fp8.convert(model)   # the engine does this after loading bf16 weights (engine.py)

The vision tower, the projector and lm_head stay in bf16. (torchao's float8 inference config, tried
first, ran slower than bf16: benchmarks/RESULTS.md.) Imported only when fp8 is used (Triton, torch).
"""
import functools
import weakref

import torch

FP8_MAX = 448.0  # the largest float8_e4m3fn


def quantize_rows(x):
    """x (rows, k) -> (e4m3 values, float32 scale per row): each row scaled to the e4m3 range."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


@functools.cache  # once per process: a new @triton.jit function would compile its kernels again
def _rows_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(X, Y, S, stride_x, stride_y, n, MAX: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
        # one program per row, the whole row in registers: read once, written once
        row, cols = tl.program_id(0).to(tl.int64), tl.arange(0, BLOCK)
        ok = cols < n
        v = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        if GATED:  # gate | up side by side: Mistral's silu(gate) * up
            v = v * tl.sigmoid(v) * tl.load(X + row * stride_x + n + cols, mask=ok, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(v), 0), 1e-12) / MAX
        tl.store(Y + row * stride_y + cols, (v / scale).to(tl.float8e4nv), mask=ok)
        tl.store(S + row, scale)
    return kernel


def fp8_rows(x, gated=False):
    """quantize_rows(x) in one Triton kernel that reads each row once; gated: of silu(gate) * up for
    x = gate | up, Mistral's MLP middle, never written in bf16. (torch.compile's kernels for the same
    ran at ~30% of the H200's bandwidth: benchmarks/RESULTS.md, session 7.)"""
    import triton
    x = x.contiguous()
    n = x.shape[1] // 2 if gated else x.shape[1]
    y = torch.empty((x.shape[0], n), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(n)
    _rows_kernel()[(x.shape[0],)](x, y, scale, x.stride(0), y.stride(0), n, MAX=FP8_MAX, GATED=gated,
                                  BLOCK=block, num_warps=8 if block <= 4096 else 16)
    return y, scale


class SharedRows:
    """Quantizes an input once for the `readers` layers that all read that same tensor (q, k and v
    read one normed hidden state); dropped after the last of them."""

    def __init__(self, readers=1):
        self.readers, self.left, self.source, self.rows = readers, 0, None, None

    def __call__(self, x):
        if self.left == 0 or self.source() is not x:
            self.rows, self.source, self.left = fp8_rows(x.reshape(-1, x.shape[-1])), weakref.ref(x), self.readers
        rows, self.left = self.rows, self.left - 1
        if self.left == 0:
            self.rows = self.source = None
        return rows


class FP8Linear(torch.nn.Module):
    """y = x W^T + b in FP8 e4m3 on FP8 tensor cores (torch._scaled_mm): W scaled per output channel
    once, x per token (row); products accumulate in fp32, y comes out in bf16, the bias (Qwen2's q, k
    and v have one) added in bf16."""

    def __init__(self, weight, rows=None, bias=None):
        super().__init__()
        w, scale = quantize_rows(weight)
        self.weight_t = w.t()                    # (in, out), column-major, as _scaled_mm wants it
        self.scale_w = scale.t().contiguous()    # (1, out)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.rows = rows or SharedRows()

    @classmethod
    def of(cls, linear, rows=None):
        """An FP8Linear of the nn.Linear `linear`, its bias kept."""
        return cls(linear.weight.data, rows, linear.bias)

    def forward(self, x):
        return self.product(*self.rows(x), x.shape[:-1])

    def product(self, xq, scale_x, shape):
        y = torch._scaled_mm(xq, self.weight_t, scale_a=scale_x, scale_b=self.scale_w, bias=self.bias,
                             out_dtype=torch.bfloat16)
        return y.reshape(*shape, y.shape[-1])


class FP8MLP(torch.nn.Module):
    """Mistral's (and Qwen2's: the same module, no biases) MLP in FP8: gate and up as one product (one
    quantization of x), then silu(gate) * up quantized in the same kernel that computes it, then down."""

    def __init__(self, mlp):
        super().__init__()
        self.gate_up = FP8Linear(torch.cat([mlp.gate_proj.weight.data, mlp.up_proj.weight.data]))
        self.down_proj = FP8Linear(mlp.down_proj.weight.data)

    def forward(self, x):
        gate_up = self.gate_up(x)
        return self.down_proj.product(*fp8_rows(gate_up.reshape(-1, gate_up.shape[-1]), gated=True), x.shape[:-1])


def convert(model):
    """The language model's linear layers in FP8 (FP8Linear, FP8MLP), each input quantized once, biases
    kept; layers already converted are left as they are. Both families' decoder layers have this shape
    (self_attn q/k/v/o_proj, mlp gate/up/down_proj with SiLU): a family whose layers differ says FP8 =
    False."""
    for layer in model.model.language_model.layers:
        if isinstance(layer.mlp, FP8MLP):
            continue
        attn = layer.self_attn
        qkv = SharedRows(readers=3)
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, FP8Linear.of(getattr(attn, name), qkv))
        attn.o_proj = FP8Linear.of(attn.o_proj)
        assert layer.mlp.gate_proj.bias is None and layer.mlp.down_proj.bias is None, "FP8MLP has no biases"
        layer.mlp = FP8MLP(layer.mlp)
    torch.cuda.empty_cache()  # the bf16 weights just freed
