"""Detector robustness: the corruption benchmark (mPC/rPC) and DeepRepair/ArchRepair-style repair."""
