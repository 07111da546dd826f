"""Capture builders for the malformed-input, fault and soak tests."""
