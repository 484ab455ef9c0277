"""The desktop app: PySide6 views over the ``appliance`` core.

Never imports torch, transformers, peft or bitsandbytes at module level (a test enforces it):
the GUI process reads GPU state through NVML only and leaves CUDA to the training child.
"""
