"""Shared settings for the trainer tier: everything offline, loopback only."""

from __future__ import annotations

import os

# Axolotl/transformers/kernels would otherwise call the Hugging Face Hub (and telemetry) on
# import; the tests may only talk to 127.0.0.0/8.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "NO_PROXY": "127.0.0.1,localhost",
}.items():
    os.environ[_name] = _value
