"""Synthetic OCT: volumes with ground truth, and a demo archive built from them."""

from qmroct.synth.generator import (
    DEFECTS,
    GroundTruth,
    SynthParams,
    fovea_offset_mm,
    generate_volume,
    to_log8,
)

__all__ = ["DEFECTS", "GroundTruth", "SynthParams", "fovea_offset_mm", "generate_volume", "to_log8"]
