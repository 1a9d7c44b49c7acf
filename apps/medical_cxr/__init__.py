"""Chest X-ray fine-tuning: report generation, classification and factuality preference tuning.

``python -m apps.medical_cxr.train`` fits and tests the report generator on the embedded
data (real IU X-ray reports, synthetic images); see docs/medical_cxr.md.
"""
