"""Quantizing Moshi: Kyutai's bf16 weights to q4, q8 or a mixed precision, out of core, with a quality report."""

from .quantizer import QuantizeResult, quantize_checkpoint
from .recipes import QuantSpec, make_plan
from .report import QualityReport, quality_reports

__all__ = ["QualityReport", "QuantSpec", "QuantizeResult", "make_plan", "quality_reports", "quantize_checkpoint"]
