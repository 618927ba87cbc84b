"""Fail-fast validation with Axolotl's own validator, run in a short-lived child process.

Why a child process: importing Axolotl costs seconds and GBs, and probing GPU capabilities
creates a CUDA context; neither should stay alive in the runner (PID 1) for the whole run.

    python -m axolotl_job_runner.validate CONFIG.yaml RESULT.json

exits 0 (valid), 78 (invalid: RESULT names the key) or 70 (the validator itself broke).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .contract import EXIT_INTERNAL_ERROR, EXIT_INVALID_CONFIG, EXIT_SUCCEEDED


class InvalidConfig(Exception):
    """A config Axolotl would reject (or crash on), with the offending key when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@dataclass(frozen=True)
class ValidConfig:
    """What the runner needs to know about a config that passed validation."""

    output_dir: str
    hub_model_id: str | None
    resume_from_checkpoint: str | None
    auto_resume: bool
    dropped_keys: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "outputDir": self.output_dir,
            "hubModelId": self.hub_model_id,
            "resumeFromCheckpoint": self.resume_from_checkpoint,
            "autoResume": self.auto_resume,
            "droppedKeys": self.dropped_keys,
        }


def load_raw_config(path: Path) -> dict[str, Any]:
    """The YAML mapping at `path`, or InvalidConfig."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfig(f"cannot read {path}: {exc.strerror or exc}", key=None) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{path.name} is not valid YAML: {exc}", key=None) from exc
    if not isinstance(data, dict):
        raise InvalidConfig(f"{path.name} must be a YAML mapping, got {type(data).__name__}", key=None)
    return data


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def key_from_message(message: str, raw: Mapping[str, Any], known_keys: set[str]) -> str | None:
    """The config key a cross-field error message is about.

    Axolotl's model validators raise plain messages ("load_in_8bit and load_in_4bit are not
    supported without setting an adapter"); prefer a mentioned key the user actually set.
    """
    mentioned: list[str] = []
    for token in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message):
        if token in known_keys and token not in mentioned:
            mentioned.append(token)
    for key in mentioned:
        if raw.get(key) not in (None, False, "", [], {}):
            return key
    for key in mentioned:
        if key in raw:
            return key
    return mentioned[0] if mentioned else None


def _dataset_error_key(title: str, loc: tuple[Any, ...], raw: Mapping[str, Any]) -> str:
    """Find which `datasets[i]` entry a dataset-model ValidationError came from."""
    from axolotl.utils.schemas import datasets as dataset_schemas
    from pydantic import ValidationError

    model = getattr(dataset_schemas, title, None)
    for list_key in ("datasets", "test_datasets"):
        entries = raw.get(list_key)
        if not isinstance(entries, list) or model is None:
            continue
        for index, entry in enumerate(entries):
            try:
                model(**dict(entry))
            except ValidationError:
                return f"{list_key}[{index}]" + ("." + _format_loc(loc) if loc else "")
            except Exception:  # any failure locates the entry
                return f"{list_key}[{index}]"
    return "datasets" + ("." + _format_loc(loc) if loc else "")


def explain(exc: BaseException, raw: Mapping[str, Any], known_keys: set[str]) -> InvalidConfig:
    """Turn whatever Axolotl raised into one message naming one key."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        loc = tuple(first.get("loc") or ())
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        if exc.title.endswith("Dataset"):
            key = _dataset_error_key(exc.title, loc, raw)
        elif loc:
            key = _format_loc(loc)
        else:
            key = key_from_message(msg, raw, known_keys)
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        prefix = f"{key}: " if key else ""
        return InvalidConfig(f"{prefix}{msg}{more}", key=key)
    message = str(exc) or type(exc).__name__
    key = key_from_message(message, raw, known_keys)
    return InvalidConfig(message, key=key)


def known_config_keys() -> set[str]:
    """Names (and aliases) Axolotl's config schema accepts."""
    from axolotl.utils.schemas.config import AxolotlInputConfig

    keys: set[str] = set()
    for name, field in AxolotlInputConfig.model_fields.items():
        keys.add(name)
        if isinstance(field.alias, str):
            keys.add(field.alias)
    return keys


def known_optimizers() -> set[str]:
    """Optimizer names transformers and Axolotl accept at trainer build time."""
    from axolotl.utils.schemas.enums import CustomSupportedOptimizers
    from transformers.training_args import OptimizerNames

    return {o.value for o in OptimizerNames} | {o.value for o in CustomSupportedOptimizers}


def gpu_capabilities(world_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Axolotl's own capability probe, with n_gpu set to the job's world size."""
    from axolotl.cli.config import gpu_capabilities as probe

    previous = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(max(world_size, 1))
    try:
        return probe()
    finally:
        if previous is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = previous


def validate_raw(
    raw: Mapping[str, Any], *, capabilities: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run Axolotl's validate_config (with the config's plugins registered) on a raw config.

    Returns the validated config as a dict; raises InvalidConfig naming the key.
    """
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    keys = known_config_keys()
    cfg = DictDefault(json.loads(json.dumps(dict(raw), default=str)))
    try:
        prepare_plugins(cfg)
        if capabilities is None:
            validated = validate_config(cfg)
        else:
            validated = validate_config(cfg, capabilities=capabilities[0], env_capabilities=capabilities[1])
    except (ValueError, TypeError, AssertionError, NotImplementedError, KeyError) as exc:
        # pydantic.ValidationError is a ValueError
        raise explain(exc, raw, keys) from exc
    optimizer = validated.get("optimizer")
    if isinstance(optimizer, str) and optimizer not in known_optimizers():
        raise InvalidConfig(
            f"optimizer: {optimizer!r} is not an optimizer transformers/Axolotl know; the run "
            "would crash after the GPUs are allocated",
            key="optimizer",
        )
    return dict(validated)


def check(path: Path, world_size: int = 1, probe_gpus: bool = True) -> ValidConfig:
    """Validate the config file at `path` the way the training child will see it."""
    raw = load_raw_config(path)
    caps = gpu_capabilities(world_size) if probe_gpus else None
    validated = validate_raw(raw, capabilities=caps)
    known = known_config_keys() | set(validated)
    output_dir = str(Path(validated.get("output_dir") or "./model-out").absolute())
    auto = raw.get("auto_resume_from_checkpoints")
    return ValidConfig(
        output_dir=output_dir,
        hub_model_id=validated.get("hub_model_id") or None,
        resume_from_checkpoint=raw.get("resume_from_checkpoint") or None,
        auto_resume=auto is not False,
        dropped_keys=sorted(k for k in raw if k not in known),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m axolotl_job_runner.validate CONFIG.yaml RESULT.json", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    config, result_path = Path(argv[0]), Path(argv[1])
    world_size = int(os.environ.get("AXOLOTL_JOB_RUNNER_WORLD_SIZE", "1"))
    try:
        result: dict[str, Any] = check(config, world_size=world_size).to_json()
        code = EXIT_SUCCEEDED
    except InvalidConfig as exc:
        result = {"ok": False, "key": exc.key, "message": exc.message}
        code = EXIT_INVALID_CONFIG
    except Exception as exc:  # reported to the runner, which decides
        result = {"ok": False, "internal": True, "message": f"{type(exc).__name__}: {exc}"}
        code = EXIT_INTERNAL_ERROR
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
