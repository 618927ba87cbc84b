"""`axolotl-operator`: offline tools (validate, render, convert, crd) and the operator itself (run)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from . import __version__, gpu_plan
from .admission import LOCAL_CONFIGURATION
from .api import KIND, SpecError, parse_job
from .api.secrets_guard import redact
from .api.validate import ParsedJob
from .convert import ConvertError, convert
from .crd import crd_yaml
from .notebook import UNKNOWN_MODES, desired, placement_for
from .render import render
from .settings import OperatorSettings
from .status import facts_of
from .yamlio import MAX_INPUT_BYTES, dump_all, load_all

LINE_COMMENT = re.compile(r"^[ \t]*//[^\n]*$", re.MULTILINE)


class InputError(Exception):
    """A file the CLI cannot read as YAML; the message names the file and why."""


def _read(path: str) -> str:
    """At most one byte more than load_all accepts: a huge file is refused without reading it all."""
    if path == "-":
        return sys.stdin.read(MAX_INPUT_BYTES + 1)
    with Path(path).open(encoding="utf-8") as stream:
        return stream.read(MAX_INPUT_BYTES + 1)


def _documents(path: str, json_comments: bool = False) -> list[Any]:
    """The file's documents, or InputError.

    `json_comments`: request bodies in docs often carry `// ...` lines, which JSON lacks. They are dropped
    only from JSON text (it starts with `{` or `[`), where no line can be inside a string; in YAML such a
    line may be content (a Jinja chat template in a `|` block), so YAML is read exactly as kubectl reads it.
    """
    try:
        text = _read(path)
    except UnicodeDecodeError:
        raise InputError(f"{path}: error: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{path}: error: {exc}") from None
    if json_comments and _is_json(text):
        text = LINE_COMMENT.sub("", text)
    try:
        return load_all(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: error: {exc}") from None


def _is_json(text: str) -> bool:
    """The first line that is neither blank nor a `//` comment opens a JSON object or array."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("//"):
            return stripped[0] in "{["
    return False


def _jobs(documents: list[Any]) -> list[Any]:
    return [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]


def _name(manifest: Mapping[str, Any]) -> str:
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) and name else "?"


def _warn(source: str, warnings: Sequence[Any], stream: TextIO) -> None:
    for warning in warnings:
        print(f"{source}: warning: {warning}", file=stream)


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            jobs = _jobs(_documents(path))
        except InputError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        if not jobs:
            print(f"{path}: error: no {KIND} document found", file=sys.stderr)
            failed = True
        for manifest in jobs:
            name = _name(manifest)
            try:
                parsed = parse_job(manifest)
            except SpecError as exc:
                _warn(f"{path}: {name}", exc.warnings, sys.stderr)
                for error in exc.errors:
                    print(f"{path}: {name}: error: {error}", file=sys.stderr)
                failed = True
                continue
            _warn(f"{path}: {name}", parsed.warnings, sys.stderr)
            print(f"{path}: {name}: valid")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    settings = OperatorSettings.from_env()
    output = []
    jobs = _jobs(_documents(args.file))
    if not jobs:
        print(f"{args.file}: error: no {KIND} document found", file=sys.stderr)
        return 1
    for manifest in jobs:
        try:
            parsed = parse_job(manifest)
        except SpecError as exc:
            for error in exc.errors:
                print(f"{args.file}: error: {error}", file=sys.stderr)
            return 1
        _warn(args.file, parsed.warnings, sys.stderr)
        namespace = args.namespace or parsed.job.metadata.namespace or "default"
        output.extend(render(parsed, settings, namespace).manifests())
        output.extend(_notebook(parsed, settings, namespace))
    sys.stdout.write(dump_all(output))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    model_config = None
    if args.model_config:
        try:
            model_config = json.loads(Path(args.model_config).read_text())
        except ValueError as exc:
            raise InputError(f"{args.model_config}: not a JSON config.json: {exc}") from None
        if not isinstance(model_config, dict):
            raise InputError(f"{args.model_config}: not a JSON object")
    jobs = _jobs(_documents(args.file))
    if not jobs:
        print(f"{args.file}: error: no {KIND} document found", file=sys.stderr)
        return 1
    for manifest in jobs:
        try:
            parsed = parse_job(manifest)
        except SpecError as exc:
            for error in exc.errors:
                print(f"{args.file}: error: {error}", file=sys.stderr)
            return 1
        spec = parsed.job.spec
        try:
            result = gpu_plan.plan(
                str(parsed.config.get("base_model")), parsed.config, spec.gpus, spec.nodes, model_config
            )
        except gpu_plan.PlanError as exc:
            print(f"{args.file}: {parsed.name}: error: {exc}", file=sys.stderr)
            return 1
        print(f"{parsed.name}:")
        sys.stdout.write(gpu_plan.render_plan(result))
    return 0


def _notebook(parsed: ParsedJob, settings: OperatorSettings, namespace: str) -> tuple[dict[str, Any], ...]:
    """The notebook's objects as they are while training runs (an existing claim taken as ReadWriteOnce)."""
    notebook = facts_of(parsed, settings).notebook
    if notebook is None:
        return ()
    placement = placement_for(notebook.claim_modes or UNKNOWN_MODES, training_runs=True)
    return desired(notebook, placement, namespace, owner=None)


def cmd_convert(args: argparse.Namespace) -> int:
    documents = _documents(args.file, json_comments=True)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        print(f"{args.file}: error: expected one Axolotl config or request body", file=sys.stderr)
        return 1
    default_name = None
    if args.file != "-" and "input" not in documents[0]:
        default_name = Path(args.file).stem
    try:
        converted = convert(
            documents[0], name=args.name, namespace=args.namespace, gpus=args.gpus, default_name=default_name
        )
    except ConvertError as exc:
        print(f"{args.file}: error: {exc}", file=sys.stderr)
        return 1
    _warn(args.file, converted.warnings, sys.stderr)
    job = converted.documents[-1]
    try:
        parsed = parse_job(job)
    except SpecError as exc:
        _warn(args.file, exc.warnings, sys.stderr)
        for error in exc.errors:
            print(f"{args.file}: error: {error}", file=sys.stderr)
        return 1
    _warn(args.file, parsed.warnings, sys.stderr)
    job["spec"]["config"] = parsed.config  # write the translated config: the job starts clean
    sys.stdout.write(dump_all(converted.documents))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .manager import run_operator  # the Kopf shell; imported only when running the operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="axolotl-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check AxolotlJob manifests offline (exit 1 on any error)")
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files; - reads standard input")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the objects the operator will create for a job")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-n", "--namespace", help="namespace (default: the manifest's, else default)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("convert", help="turn an Axolotl YAML config or request body into an AxolotlJob")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="job name (default: run_id of a request body, or the file name)")
    p.add_argument("-n", "--namespace")
    p.add_argument("--gpus", type=int, help="GPUs per node (0 for a CPU-only job)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("plan", help="estimate the GPU memory a job needs, per GPU, before it runs")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--model-config", metavar="CONFIG_JSON", help="the base model's config.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("crd", help="print the CustomResourceDefinition")
    p.set_defaults(func=cmd_crd)

    p = sub.add_parser("run", help="run the operator (Kopf, standalone)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable; globs allowed)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    p.add_argument("--metrics-port", type=int, default=9400, help="Prometheus metrics port; 0 disables")
    p.add_argument("--image", dest="default_image", help="default trainer image")
    p.add_argument("--gpu-resource-name", help="extended resource for GPUs (default nvidia.com/gpu)")
    p.add_argument("--default-storage-size", help="claim size when spec.storage.size is unset")
    p.add_argument("--default-storage-class", help="StorageClass when spec.storage has none")
    p.add_argument("--progress-url", help="URL trainer pods POST progress to")
    p.add_argument("--progress-port", type=int, default=0, help="serve POST /progress here; 0 disables")
    p.add_argument("--progress-host", default="0.0.0.0", help="address of the progress endpoint")
    p.add_argument(
        "--progress-cert-secret",
        default="",
        metavar="NAMESPACE/NAME",
        help="with an https progress URL: the Secret that keeps the endpoint's CA and certificate "
        "(the chart's); unset: a CA in memory (local runs)",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=300.0,
        help="re-list AxolotlJobs and recompute unfinished ones this often (a safety net); 0 disables",
    )
    hook = p.add_argument_group("admission webhook (bad specs refused at kubectl apply)")
    hook.add_argument("--webhook-port", type=int, default=0, help="serve the validating webhook; 0 disables")
    hook.add_argument("--webhook-address", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)")
    hook.add_argument(
        "--webhook-configuration",
        default=LOCAL_CONFIGURATION,
        help="the ValidatingWebhookConfiguration's name (a cluster: the chart's)",
    )
    hook.add_argument(
        "--webhook-service",
        default="",
        metavar="NAMESPACE/NAME",
        help="in a cluster: the Service in front of the webhook (its configuration is the chart's; the "
        "operator sets the caBundle); unset: register a URL on --webhook-address (local runs)",
    )
    hook.add_argument(
        "--webhook-cert-secret", default="", help="Secret that keeps the webhook's CA and certificate"
    )
    hook.add_argument(
        "--webhook-cert-dir", default="", help="use tls.crt, tls.key, ca.crt from here (cert-manager)"
    )
    hook.add_argument(
        "--webhook-failure-policy",
        choices=("Fail", "Ignore"),
        default="Fail",
        help="of the local registration",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, yaml.YAMLError) as exc:  # malformed YAML/JSON
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.command == "run":
            raise  # the operator's own failures keep their traceback for its logs
        # Offline commands read files from anyone: a bug they hit still ends in a message, not a traceback.
        print(
            f"error: unexpected {type(exc).__name__}: {redact(str(exc))} (a bug: please report it)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
