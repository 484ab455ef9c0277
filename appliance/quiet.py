"""Keep the libraries' chatter off stderr while an import or export runs.

The CLI owns stderr (its own progress bar, and on failure one ``error:`` line), and the GUI
reports progress through callbacks, so transformers' progress bars, peft's and transformers'
deprecation warnings and bitsandbytes' note about an optional kernel package are silenced for
the duration of the export and restored afterwards.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_NOISY_LOGGERS = ("bitsandbytes", "peft")
_NOISY_MODULES = r"(transformers|peft|torch|bitsandbytes|accelerate)(\.|$)"


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence progress bars, library warnings and informational logging inside the block."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # transformers' GGUF reader draws a tqdm bar of its own, outside its logging switch.
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    gguf_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=_NOISY_MODULES)
            yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
