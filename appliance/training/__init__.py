"""Training: configuration, pre-flight memory estimate, the event stream, the child and its parent.

Importing this package is cheap on purpose (no torch, no transformers): the CLI and the GUI read
configs, estimates and events without loading the deep-learning stack. Only ``quant``,
``memory`` and the worker import torch, and only when they are used.
"""

from __future__ import annotations
