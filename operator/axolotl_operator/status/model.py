"""The status computation's value types: what it needs from the spec, what it decides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..api.status import Phase, Reason

if TYPE_CHECKING:
    from ..notebook import NotebookPlan


@dataclass(frozen=True)
class JobFacts:
    """What the status needs from the validated spec (or the validation errors)."""

    spec_errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    output_dir: str | None = None
    hub_model_id: str | None = None
    claim_name: str | None = None
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    queue_name: str | None = None
    suspend: bool = False
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    notebook: NotebookPlan | None = None  # spec.notebook, enabled
    gpu_fit: tuple[bool, str] | None = None  # the GPU plan against the GPUs' known memory


@dataclass(frozen=True)
class Observation:
    """The phase, its reason and the message a user reads, plus the summary the numbers come from."""

    phase: Phase
    reason: Reason
    message: str
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class Transition:
    """One thing to tell the user as an Event on the AxolotlJob."""

    type: str  # Normal or Warning
    reason: Reason
    message: str


def facts_of(parsed: Any, settings: Any) -> JobFacts:
    """JobFacts of a valid job (a ParsedJob and the OperatorSettings)."""
    from ..gpu_plan import fit_check
    from ..notebook import plan
    from ..render import (  # pure; imported here: no import cycle
        claim_access_modes,
        existing_claim,
        mounted_claim,
        training_config,
    )

    spec = parsed.job.spec
    config, _ = training_config(parsed, settings)
    existing = existing_claim(parsed.job)
    claim = mounted_claim(parsed)
    return JobFacts(
        warnings=tuple(str(w) for w in parsed.warnings),
        output_dir=config.get("output_dir"),
        hub_model_id=config.get("hub_model_id"),
        claim_name=claim,
        gpus=spec.gpus,
        gpu_resource=settings.gpu_resource_name,
        queue_name=spec.queue_name or None,
        suspend=spec.suspend,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
        notebook=plan(parsed, settings, None if existing else claim_access_modes(spec)),
        gpu_fit=fit_check(
            str(config.get("base_model")), config, spec.gpus, spec.nodes, spec.gpu_memory, spec.node_selector
        ),
    )


def facts_of_error(error: Any) -> JobFacts:
    """JobFacts of an invalid job (a SpecError): its errors and warnings."""
    return JobFacts(
        spec_errors=tuple(str(e) for e in error.errors) or (str(error),),
        warnings=tuple(str(w) for w in error.warnings),
    )
