"""Kubernetes' own rules for the values a spec passes on: label keys and values, names, env names,
quantities. Checked here so a value the API server would refuse (a 422 on every create) is refused
offline and at validation, naming the field; the patterns also go into the CRD's schema.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# A non-negative resource.Quantity: a decimal number with an optional exponent or SI / binary suffix.
QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
IMAGE_PATTERN = r"^\S+$"


def _qualified_name(key: str) -> str:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of at most 63
    characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not re.match(DNS_SUBDOMAIN_PATTERN, prefix)):
        raise ValueError(f"{key!r}: the prefix before '/' must be a DNS subdomain (e.g. example.com)")
    if not 0 < len(name) <= 63 or not LABEL_NAME.match(name):
        raise ValueError(
            f"{key!r} is not a valid key: at most 63 characters of letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (optionally prefixed by 'example.com/')"
        )
    return key


DnsSubdomain = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
LabelKey = Annotated[str, AfterValidator(_qualified_name)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
EnvName = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=ENV_NAME_PATTERN)]
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]
Quantity = (
    Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)]
)
# One word of a container's command or args: bounded (the whole spec is bounded too), one line or many.
Argument = Annotated[str, StringConstraints(max_length=4096)]
Image = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=IMAGE_PATTERN)]
