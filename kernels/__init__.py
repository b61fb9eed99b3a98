"""Kernels of the project (installed as ``rodpo_kernels``): top-K pool scoring and fused DPO loss.

Each op has a PyTorch reference, a chunked/fused PyTorch path (CPU) and a Triton kernel (CUDA;
also runs under ``TRITON_INTERPRET=1``), behind one public function with ``backend="auto"``.
"""

from .dpo_loss import DPOOutput, dpo_loss
from .topk_scoring import Exclusion, TopK, merge_topk, topk_scores

__all__ = ["DPOOutput", "Exclusion", "TopK", "dpo_loss", "merge_topk", "topk_scores"]
