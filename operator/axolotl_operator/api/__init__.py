"""The AxolotlJob API: models, translation of stale Axolotl options, validation."""

from .issues import FieldIssue, SpecError
from .job import API_VERSION, GROUP, KIND, PLURAL, VERSION, AxolotlJob
from .status import AxolotlJobStatus, ConditionType, Phase, Reason
from .validate import ParsedJob, parse_job

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AxolotlJob",
    "AxolotlJobStatus",
    "ConditionType",
    "FieldIssue",
    "ParsedJob",
    "Phase",
    "Reason",
    "SpecError",
    "parse_job",
]
