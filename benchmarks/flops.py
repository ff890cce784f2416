"""FLOP counting that includes attention on every device (imported by the other benchmark scripts).

`torch.utils.flop_counter.FlopCounterMode` has formulas for the CUDA attention kernels but none for the CPU fused
kernel `aten._scaled_dot_product_flash_attention_for_cpu` (nor its backward), so on CPU it silently counts a
ViT's attention as zero: about a third of ViT-M/16's FLOPs at 640 px, most of them at 1024 px. Here the missing
ops get torch's own analytic SDPA formulas (`sdpa_flop_count`: 2 FLOPs per multiply-add of QK^T and of AV;
softmax not counted, as for every other op), registered once at import.

    from flops import count_gflops
    gflops = count_gflops(lambda: model(x))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _register() -> None:
    if _CPU_FLASH not in flop_counter.flop_registry:

        @register_flop_formula(_CPU_FLASH)
        def _cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
            return flop_counter.sdpa_flop_count(query, key, value)

    if _CPU_FLASH_BWD not in flop_counter.flop_registry:

        @register_flop_formula(_CPU_FLASH_BWD)
        def _cpu_flash_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
            return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


_register()


def attention_gflops(tokens_per_sequence: int, sequences: int, dim: int) -> float:
    """Analytic attention FLOPs of one block: QK^T and AV, each 2 * tokens^2 * dim per sequence."""
    return 4 * sequences * tokens_per_sequence**2 * dim / 1e9


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call of `fn` (matmuls, convolutions and attention; 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def count_gflops_by_module(fn: Callable[[], object], depth: int = 3) -> dict[str, float]:
    """GFLOPs of one call of `fn` per module name, up to `depth` levels (FlopCounterMode's hierarchy)."""
    with FlopCounterMode(display=False, depth=depth) as counter:
        fn()
    return {name: sum(ops.values()) / 1e9 for name, ops in counter.get_flop_counts().items()}
