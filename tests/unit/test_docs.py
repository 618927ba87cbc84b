"""The troubleshooting page lists every status reason the operator writes, and nothing else."""

from __future__ import annotations

import re

from axolotl_operator.api.status import Reason
from conftest import REPO

PAGE = REPO / "docs" / "troubleshooting.md"


def test_every_reason_has_a_row_and_every_row_is_a_reason():
    rows = set(re.findall(r"^\| `([A-Za-z]+)` \|", PAGE.read_text(), re.MULTILINE))
    assert rows == {reason.value for reason in Reason}


def test_the_argo_cd_values_carry_the_tested_health_script_verbatim():
    import yaml

    values = yaml.safe_load((REPO / "docs" / "argocd" / "values.yaml").read_text())
    embedded = values["configs"]["cm"]["resource.customizations.health.axolotl.ai_AxolotlJob"]
    assert embedded == (REPO / "docs" / "argocd" / "health.lua").read_text()
