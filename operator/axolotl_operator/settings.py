"""Operator-wide settings: the defaults a job gets when its spec leaves them out.

Read from flags or `AXOLOTL_OPERATOR_*` environment variables so that the Helm chart, the CLI and the
tests configure the operator the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

DEFAULT_TRAINER_IMAGE = "ghcr.io/axolotl-operator/trainer:0.1.0-axolotl0.21.0"
ENV_PREFIX = "AXOLOTL_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    """Settings shared by render (pure) and the Kopf shell."""

    default_image: str = DEFAULT_TRAINER_IMAGE
    gpu_resource_name: str = "nvidia.com/gpu"
    default_storage_size: str = "100Gi"
    default_storage_class: str = ""
    # Where trainer pods POST progress; empty disables progress reporting to the operator.
    progress_url: str = ""
    progress_audience: str = "axolotl-operator"
    # The CA certificate (PEM) trainer pods verify an https progress URL with; the operator sets it from
    # the endpoint's own CA (`progress_tls`). Empty: the image's system CAs.
    progress_ca: str = ""
    image_pull_policy: str = "IfNotPresent"
    # A claim in each job's namespace shared by all jobs as their model and dataset cache; empty: none.
    cache_claim: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> OperatorSettings:
        """Build settings from `AXOLOTL_OPERATOR_<FIELD>` variables; explicit overrides win."""
        environ = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for field in fields(cls):
            env_value = environ.get(ENV_PREFIX + field.name.upper())
            if env_value is not None:
                values[field.name] = env_value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
