"""Turn a raw AxolotlJob manifest into a validated job and the exact config Axolotl will read.

The same function serves the CLI (`validate`, `render`) and the operator, so what passes offline passes
in the cluster and what the operator refuses is refused offline too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..trainer_contract import Env
from ..yamlio import dump
from .compat import translate_config
from .config import AxolotlConfig, Dataset
from .issues import FieldIssue, SpecError, config_path, join_path, value_kind
from .job import MAX_NAME_LENGTH, NOTEBOOK_TOKEN_ENV, AxolotlJob
from .known_keys import axolotl_keys, did_you_mean
from .messages import echo, example_from, humanize
from .secrets_guard import find_spec_secrets

RWX = "ReadWriteMany"
TOP_LEVEL_MAPPINGS = {
    "metadata": "a mapping such as {name: my-job}",
    "spec": "a mapping with config (the Axolotl config), e.g. {config: {base_model: ...}}",
}
# What the operator sets in the trainer container is its contract with the runner, not the user's to
# override (a changed progress URL or token file would send the pod's token elsewhere); tokens come
# from Secret references only; the dynamic loader's hooks would run code inside the runner.
SECRET_SOURCED_ENV = {
    Env.HF_TOKEN: "spec.secrets.hfToken",
    Env.WANDB_API_KEY: "spec.secrets.wandbApiKey",
    NOTEBOOK_TOKEN_ENV: "spec.notebook.tokenSecret",
}
RESERVED_ENV = frozenset(v for k, v in vars(Env).items() if not k.startswith("_")) | {
    "LD_PRELOAD",
    "LD_AUDIT",
}
RESERVED_LABEL_PREFIXES = ("axolotl.ai/", "batch.kubernetes.io/", "app.kubernetes.io/")
RESERVED_LABELS = frozenset(
    {"controller-uid", "job-name", "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"}
)
MAX_UNKNOWN_WARNINGS = 50
MAX_DEPTH = 64  # Axolotl configs nest a few levels; hundreds only crash recursive code
# Axolotl has about 600 keys; a spec of 60,000 takes the webhook seconds to judge (the YAML dump for the
# ConfigMap budget), time during which every other apply waits.
MAX_VALUES = 10_000
# A ConfigMap holds at most 1 MiB; leave room for its metadata and the operator's defaults.
CONFIG_MAX_BYTES = 1_000_000


@dataclass(frozen=True)
class ParsedJob:
    """A valid job: the typed model, the translated config (what the ConfigMap gets) and the warnings."""

    job: AxolotlJob
    config: dict[str, Any]
    warnings: tuple[FieldIssue, ...]

    @property
    def name(self) -> str:
        return self.job.metadata.name


def parse_job(manifest: Mapping[str, Any]) -> ParsedJob:
    """Validate, translate and check a manifest; raise SpecError naming every bad field."""
    if not isinstance(manifest, Mapping):
        raise SpecError(
            [FieldIssue("(document)", "expected a YAML mapping with apiVersion, kind, metadata, spec")]
        )
    shape = [
        FieldIssue(key, f"expected {what}, got {value_kind(manifest[key])}")
        for key, what in TOP_LEVEL_MAPPINGS.items()
        if manifest.get(key) is not None and not isinstance(manifest[key], Mapping)
    ]
    if shape:
        raise SpecError(shape)
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise SpecError([FieldIssue("spec", "required: the job's spec with at least spec.config.base_model")])
    raw_config = spec.get("config")
    if not isinstance(raw_config, Mapping):
        raise SpecError(
            [FieldIssue("spec.config", "required: the Axolotl config (a mapping), e.g. base_model")]
        )

    oversize = _oversize(spec)  # before anything recursive or slow (the parsers, the YAML dumper) sees it
    if oversize is not None:
        raise SpecError([oversize])
    errors = find_spec_secrets(spec)
    if errors:  # stop here: nothing else gets to echo a secret back
        raise SpecError(errors)

    try:
        translation = translate_config(dict(raw_config))
    except Exception as exc:  # a shape the translation rules did not expect: refused, never a crash
        raise SpecError(
            [FieldIssue("spec.config", f"cannot be read ({type(exc).__name__}); check its types")]
        ) from None
    errors = list(translation.errors)
    warnings = list(translation.warnings)

    candidate = {**manifest, "spec": {**spec, "config": translation.config}}
    job: AxolotlJob | None = None
    try:
        job = AxolotlJob.model_validate(candidate)
    except ValidationError as exc:
        errors.extend(_pydantic_issues(exc))
    if job is not None:
        errors.extend(_cross_field_issues(job))
        errors.extend(_reserved_env_issues(job))
        errors.extend(_reserved_label_issues(job))
        errors.extend(_config_size_issues(translation.config))
        errors.extend(_quoted_scalar_issues(translation.config))
        warnings.extend(_missing_secret_warnings(job))
    warnings.extend(_unknown_key_warnings(translation.config))
    if errors:
        raise SpecError(_dedupe(errors), warnings)
    assert job is not None
    return ParsedJob(job=job, config=translation.config, warnings=tuple(warnings))


def _oversize(spec: Any) -> FieldIssue | None:
    """Nested deeper than MAX_DEPTH or holding more than MAX_VALUES values, found in one walk without
    recursion (a hostile spec must not overflow the stack or feed the slow checks)."""
    count, stack = 0, [(spec, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ()
        for child in children:
            count += 1
            if count > MAX_VALUES:
                return FieldIssue(
                    "spec",
                    f"holds more than {MAX_VALUES} values; an Axolotl config needs a few "
                    "hundred: keep large data (datasets, templates) in files on the claim",
                )
            if isinstance(child, Mapping | list):
                if depth + 1 > MAX_DEPTH:
                    return FieldIssue("spec", f"nested more than {MAX_DEPTH} levels deep; flatten it")
                stack.append((child, depth + 1))
    return None


def _pydantic_issues(exc: ValidationError) -> list[FieldIssue]:
    issues = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        path = join_path("", *loc) if loc else "(document)"
        message = error["msg"]
        key = next((str(part) for part in reversed(loc) if isinstance(part, str)), "value")
        if error["type"] == "string_too_long" and loc[-2:] == ["metadata", "name"]:
            message = f"at most {MAX_NAME_LENGTH} characters (child objects and pods append suffixes)"
        elif error["type"] == "string_pattern_mismatch" and loc[-2:] == ["metadata", "name"]:
            message = "must be a DNS-1123 label: lower-case letters, digits and '-'"
        elif error["type"] == "extra_forbidden":
            message = f"unknown field{did_you_mean(str(loc[-1]), _sibling_fields(loc))}"
        elif error["type"] == "literal_error":
            message = f"{message}; got {echo(error.get('input'))}"
        else:
            field = _field_at(loc)
            example = example_from(field.description) if field is not None else None
            message = humanize(error, key, example) or message
        issues.append(FieldIssue(path, message))
    return issues


def _scalar_types(annotation: Any) -> frozenset[type]:
    """The plain scalar types an annotation such as `PositiveInt | None` admits (Annotated unwrapped)."""
    if annotation in (bool, int, float, str):
        return frozenset({annotation})
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return frozenset(type(arg) for arg in args)
    if get_origin(annotation) is Annotated:
        return _scalar_types(args[0])
    return frozenset().union(*map(_scalar_types, args)) if args else frozenset()


def _quoted_scalar_issues(config: Mapping[str, Any]) -> list[FieldIssue]:
    """Strings where a boolean or number belongs: pydantic would coerce them, the CRD schema refuses them.

    Refusing them here keeps the CLI, the webhook and the API server in agreement, and says why: YAML 1.1
    (PyYAML, many editors) reads `yes` as true, Kubernetes reads YAML 1.2, where only true/false are.
    """
    fields = AxolotlConfig.model_fields
    issues = []
    for key, value in config.items():
        field = fields.get(key)
        if field is None or not isinstance(value, str):
            continue
        types = _scalar_types(field.annotation)
        if str in types or not types:
            continue
        if types == {bool}:
            message = f"must be true or false, got the string {echo(value)}; write true or false unquoted"
        else:
            message = f"must be a number, got the string {echo(value)}; write the number without quotes"
        issues.append(FieldIssue(config_path(key), message))
    return issues


def _is_union_tag(part: Any) -> bool:
    """pydantic adds the union member to the location (e.g. 'str', 'list[str]'); users never wrote it."""
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool", "dict", "list"}
        or "[" in part
        or part.startswith(("constrained-", "function-", "literal["))
    )


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[EnvVar] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def _model_at(loc: list[Any]) -> Any:
    """The pydantic model that holds the field at `loc[-1]` (None when the path leaves the models)."""
    model: Any = AxolotlJob
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list index: same item model
        info = {field.alias or name: field for name, field in model.model_fields.items()}.get(part)
        model = _model_in(info.annotation) if info else None
        if model is None:
            return None
    return model


def _field_at(loc: list[Any]) -> FieldInfo | None:
    model = _model_at(loc) if loc else None
    if model is None:
        return None
    return {field.alias or name: field for name, field in model.model_fields.items()}.get(loc[-1])


def _sibling_fields(loc: list[Any]) -> frozenset[str]:
    """The field names allowed where an unknown field was found, for a did-you-mean hint."""
    model = _model_at(loc)
    if model is None:
        return frozenset()
    return frozenset(field.alias or name for name, field in model.model_fields.items())


def _cross_field_issues(job: AxolotlJob) -> list[FieldIssue]:
    c = job.spec.config
    issues = []

    def fail(key: str, message: str) -> None:
        issues.append(FieldIssue(config_path(key), message))

    for quantized in ("load_in_4bit", "load_in_8bit"):
        if getattr(c, quantized) and not c.adapter:
            fail(quantized, "a quantized base model cannot be fully fine-tuned; set adapter: qlora (or lora)")
    if c.load_in_4bit and c.load_in_8bit:
        fail("load_in_8bit", "load_in_4bit and load_in_8bit exclude each other; keep one")
    if c.adapter == "qlora" and not c.load_in_4bit:
        fail("adapter", "qlora needs load_in_4bit: true (or use adapter: lora)")
    if c.adapter == "qlora" and c.load_in_8bit:
        fail("load_in_8bit", "qlora loads the model in 4 bits; remove load_in_8bit")
    exclusive = (
        ("warmup_steps", "warmup_ratio"),
        ("gpu_memory_limit", "max_memory"),
        ("save_steps", "saves_per_epoch"),
        ("eval_steps", "evals_per_epoch"),
    )
    for first, second in exclusive:
        if getattr(c, first) and getattr(c, second):
            fail(second, f"{first} and {second} exclude each other; keep one")
    if c.bf16 is True and c.fp16 is True:
        fail("fp16", "bf16 and fp16 are both true; keep one (bf16 on Ampere and newer)")
    if c.adapter is None and any(
        getattr(c, key) is not None
        for key in ("lora_r", "lora_alpha", "lora_target_modules", "lora_model_dir")
    ):
        fail("adapter", "LoRA options are set but no adapter; set adapter: lora (or remove the lora_* keys)")

    spec = job.spec
    if spec.nodes > 1 and spec.storage is not None and not spec.storage.existing_claim:
        modes = spec.storage.access_modes
        if modes is not None and RWX not in modes:
            issues.append(
                FieldIssue(
                    "spec.storage.accessModes",
                    f"a {spec.nodes}-node job shares its volume across nodes: use [ReadWriteMany] "
                    "(and a StorageClass that supports it) or an existingClaim",
                )
            )
    if spec.args and not spec.command:
        issues.append(
            FieldIssue(
                "spec.args",
                "arguments go to spec.command (the runner takes none): set spec.command, or remove spec.args",
            )
        )
    if spec.workload_priority_class_name and not spec.queue_name:
        issues.append(
            FieldIssue(
                "spec.workloadPriorityClassName",
                "only Kueue reads it, and only for a queued job: set spec.queueName to a LocalQueue, "
                "or use spec.priorityClassName for the pods' own priority",
            )
        )
    notebook_on = spec.notebook is not None and spec.notebook.enabled
    if notebook_on and not job.metadata.name[:1].isalpha():
        issues.append(
            FieldIssue(
                "metadata.name",
                f"the notebook's Service {job.metadata.name}-notebook needs a name that starts with a letter "
                "(a Kubernetes Service name rule): rename the job, e.g. job-" + job.metadata.name,
            )
        )
    if spec.notebook is not None and spec.notebook.enabled and spec.notebook.token_secret is None:
        issues.append(
            FieldIssue(
                "spec.notebook.tokenSecret",
                "required when the notebook is enabled: anyone with the token runs code with the job's "
                "Secrets; create one (kubectl create secret generic my-notebook "
                "--from-literal=token=$(openssl rand -hex 24)) and set {name: my-notebook, key: token}",
            )
        )
    return issues


def _reserved_env_issues(job: AxolotlJob) -> list[FieldIssue]:
    issues = []
    for index, var in enumerate(job.spec.env or []):
        path = join_path("spec.env", index, "name")
        if var.name in SECRET_SOURCED_ENV:
            where = SECRET_SOURCED_ENV[var.name]
            issues.append(
                FieldIssue(path, f"{var.name} comes from {where} (a Secret reference); set it there")
            )
        elif var.name in RESERVED_ENV:
            issues.append(FieldIssue(path, f"{var.name} is set by the operator for the trainer; remove it"))
    return issues


def _reserved_label_issues(job: AxolotlJob) -> list[FieldIssue]:
    """Labels the operator and the Job controller put on the pods select them; a user's would break that."""
    labels = (job.spec.pod_metadata.labels if job.spec.pod_metadata else None) or {}
    return [
        FieldIssue(
            join_path("spec.podMetadata.labels", key), "set by the operator or the Job controller; remove it"
        )
        for key in labels
        if key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABELS
    ]


def _config_size_issues(config: Mapping[str, Any]) -> list[FieldIssue]:
    size = len(dump(dict(config)).encode())
    if size <= CONFIG_MAX_BYTES:
        return []
    message = (
        f"the rendered config is {size} bytes, over the {CONFIG_MAX_BYTES}-byte ConfigMap budget; "
        "put large values (chat templates, inline datasets) in files on the volume and reference them"
    )
    return [FieldIssue("spec.config", message)]


def _missing_secret_warnings(job: AxolotlJob) -> list[FieldIssue]:
    """A Hub push or W&B run without its credential fails late, after the GPU hours are spent."""
    secrets = job.spec.secrets
    env_names = {var.name for var in job.spec.env or []}
    warnings = []
    if job.spec.config.hub_model_id and (secrets is None or secrets.hf_token is None):
        warnings.append(
            FieldIssue(
                "spec.secrets.hfToken", "hub_model_id is set but no HF token: the push at the end will fail"
            )
        )
    if (
        job.spec.config.wandb_project
        and (secrets is None or secrets.wandb_api_key is None)
        and "WANDB_MODE" not in env_names
    ):
        warnings.append(
            FieldIssue(
                "spec.secrets.wandbApiKey",
                "wandb_project is set but no W&B key: set it or WANDB_MODE=offline",
            )
        )
    return warnings


def _unknown_key_warnings(config: Mapping[str, Any]) -> list[FieldIssue]:
    """Keys Axolotl would ignore, with a did-you-mean for the first MAX_UNKNOWN_WARNINGS (a suggestion
    costs a fuzzy match against every known key; a hostile config may have thousands)."""
    known = frozenset(axolotl_keys()["config_keys"]) | frozenset(AxolotlConfig.model_fields)
    dataset_known = frozenset(axolotl_keys()["dataset_keys"]) | frozenset(Dataset.model_fields)
    unknown = [(config_path(key), key, known, "key") for key in config if key not in known]
    datasets = config.get("datasets")
    for index, dataset in enumerate(datasets if isinstance(datasets, list) else []):
        if isinstance(dataset, Mapping):
            unknown += [
                (config_path("datasets", index, key), key, dataset_known, "dataset key")
                for key in dataset
                if key not in dataset_known
            ]
    warnings = [
        FieldIssue(path, f"not a {what} Axolotl knows; it will be ignored{did_you_mean(str(key), choices)}")
        for path, key, choices, what in unknown[:MAX_UNKNOWN_WARNINGS]
    ]
    if len(unknown) > MAX_UNKNOWN_WARNINGS:
        more = len(unknown) - MAX_UNKNOWN_WARNINGS
        warnings.append(FieldIssue("spec.config", f"... and {more} more keys Axolotl does not know"))
    return warnings


def _dedupe(issues: list[FieldIssue]) -> list[FieldIssue]:
    """One message per field: the compat layer's (it knows the fix) beats the schema's generic one."""
    first: dict[str, FieldIssue] = {}
    for issue in issues:
        first.setdefault(issue.path, issue)
    return list(first.values())
