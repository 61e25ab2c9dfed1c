"""Torch references that the Triton kernels are tested against (torch only, no triton)."""
