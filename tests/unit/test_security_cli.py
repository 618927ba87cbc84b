"""Hostile input to the offline CLI: convert's names and types, top-level shapes, render fidelity, YAML caps.

Every input here is what an attacker (or a careless script) could hand the CLI; each must end in a message
naming the field and the fix, never a traceback, a hang, or output that overwrites someone else's Secret.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import yaml
from axolotl_operator.api import parse_job
from axolotl_operator.api.job import DNS_LABEL, MAX_NAME_LENGTH
from axolotl_operator.cli import main
from axolotl_operator.convert import ConvertError, convert
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.yamlio import MAX_DEPTH, MAX_INPUT_BYTES, YAMLLimitError, dump, load_all
from conftest import REPO, manifest

CONFIG = {"base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora"}
HF_TOKEN = "hf_" + "A1b2C3d4" * 5
WANDB_KEY = "0123456789abcdef" * 2 + "01234567"


def body(run_id: object = "run-1", **fields: object) -> dict[str, object]:
    """A request body; `fields` replace input.* (credentials, args, user_id, ...)."""
    payload: dict[str, object] = {
        "run_id": run_id,
        "credentials": {"hf_token": HF_TOKEN},
        "args": dict(CONFIG),
    }
    payload.update(fields)
    return {"input": payload}


def names(run_id: str) -> tuple[str, str]:
    """(job name, Secret name) that convert gives a request body with this run_id."""
    secret, job = convert(body(run_id)).documents
    return job["metadata"]["name"], secret["metadata"]["name"]


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str, *argv: str):
    """Run the CLI in-process on `stdin`: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([*argv, "-"])
    out, err = capsys.readouterr()
    return code, out, err


# --- convert: names that stay unique, a Secret that is recognisably the job's -------------------------


def test_ids_that_sanitise_alike_get_different_stable_names():
    first, second = names("Team A/run 1"), names("team-a_run-1")
    assert first[0] != second[0] and first[1] != second[1]
    for job_name, secret_name in (first, second):
        assert re.fullmatch(DNS_LABEL, job_name) and len(job_name) <= MAX_NAME_LENGTH
        assert job_name.startswith("team-a-run-1-") and secret_name == f"{job_name}-credentials"
    assert names("Team A/run 1") == first  # stable: the same id always gives the same name
    assert names("team-a-run-1") == ("team-a-run-1", "team-a-run-1-credentials")  # valid ids stay as written


def test_long_ids_sharing_their_first_50_characters_get_different_names():
    prefix = "experiment-" + "x" * 39  # 50 characters, a valid name on its own
    first, second = names(prefix + "-alpha"), names(prefix + "-beta")
    assert first[0] != second[0] and first[1] != second[1]
    for job_name, secret_name in (first, second):
        assert re.fullmatch(DNS_LABEL, job_name) and len(job_name) <= MAX_NAME_LENGTH
        assert len(secret_name) <= 63
        parse_job({**manifest(), "metadata": {"name": job_name}})  # the operator accepts the name


def test_the_secret_carries_the_job_label_and_the_run_annotations():
    secret, job = convert(body("Run 7", user_id="alice"), namespace="ml").documents
    name = job["metadata"]["name"]
    assert secret["metadata"]["labels"] == {"axolotl.ai/job": name}
    assert secret["metadata"]["annotations"] == job["metadata"]["annotations"]
    assert secret["metadata"]["annotations"]["axolotl.ai/run-id"] == "Run 7"
    assert job["spec"]["secrets"]["hfToken"]["name"] == secret["metadata"]["name"] == f"{name}-credentials"


@pytest.mark.parametrize("field", ["run_id", "user_id", "model_id"])
@pytest.mark.parametrize("token", [HF_TOKEN, WANDB_KEY, f"run-{HF_TOKEN}"])
def test_a_token_looking_id_is_refused_without_echoing_it(field, token):
    document = body(**{field: token}) if field != "run_id" else body(token)
    with pytest.raises(ConvertError, match=rf"input\.{field} looks like an access token") as caught:
        convert(document)
    assert token not in str(caught.value) and token.lower() not in str(caught.value)


def test_a_token_looking_name_is_refused():
    with pytest.raises(ConvertError, match="--name looks like an access token"):
        convert(dict(CONFIG), name=HF_TOKEN)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (body(credentials=["hf_token", HF_TOKEN]), "input.credentials: expected a mapping"),
        (body(credentials={"hf_token": 12345}), "input.credentials.hf_token: expected the token as a string"),
        (
            body(credentials={"wandb_api_key": {"k": "v"}}),
            "input.credentials.wandb_api_key: expected the token",
        ),
        (body(args=["base_model", "x"]), "input.args: expected a mapping"),
        (body(args="base_model: x"), "input.args: expected a mapping"),
        (body(["run", "1"]), "input.run_id: expected a string, got a list"),
        (body(user_id={"id": 1}), "input.user_id: expected a string, got a mapping"),
        ({"input": "run-1"}, "input: expected a mapping"),
        ({**CONFIG, "hf_token": 12345}, "hf_token: expected the token as a string"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_by_name(document, field):
    with pytest.raises(ConvertError) as caught:
        convert(document, default_name="job")
    assert str(caught.value).startswith(field)


def test_convert_cli_refuses_a_malformed_body_without_a_traceback(tmp_path):
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body(credentials=[HF_TOKEN])))
    result = subprocess.run(
        [sys.executable, "-m", "axolotl_operator.cli", "convert", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "input.credentials: expected a mapping" in result.stderr and "Traceback" not in result.stderr
    assert HF_TOKEN not in result.stderr


# --- CLI: malformed top-level shapes -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "render"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("metadata", "foo", "metadata: expected a mapping such as {name: my-job}, got a string"),
        ("metadata", ["demo"], "metadata: expected a mapping such as {name: my-job}, got a list"),
        ("spec", [1], "spec: expected a mapping with config"),
    ],
)
def test_a_malformed_top_level_field_is_named(capsys, monkeypatch, command, field, value, message):
    document = {**manifest(), field: value}
    code, out, err = cli(capsys, monkeypatch, yaml.safe_dump(document), command)
    assert code == 1 and out == ""
    assert message in err and "Traceback" not in err


def test_mapping_keys_become_the_strings_the_api_server_sees(capsys, monkeypatch):
    text = yaml.safe_dump(manifest({"added_tokens_overrides": {128041: "<|im_start|>"}}))
    code, out, err = cli(capsys, monkeypatch, text, "render")
    assert code == 0, err
    config = yaml.safe_load(next(yaml.safe_load_all(out))["data"]["config.yaml"])
    assert config["added_tokens_overrides"] == {"128041": "<|im_start|>"}

    code, out, err = cli(capsys, monkeypatch, text.replace("128041:", "null:"), "validate")
    assert code == 1 and "the mapping key 'null' is not a string; quote it" in err


# --- render: shows exactly what the operator creates -----------------------------------------------------

TEMPLATE = (
    "{% for message in messages %}\n"
    "// the template's own comment\n"
    "  // indented, inside a loop\n"
    "{{ message['content'] }}{% endfor %}\n"
)


def test_render_keeps_slash_slash_lines_inside_block_scalars(capsys, monkeypatch):
    job = manifest({"chat_template": "jinja", "chat_template_jinja": TEMPLATE})
    text = dump(job)  # the template as a `|` block, its `//` lines at the start of lines
    assert "\n      // the template's own comment\n" in text
    code, out, err = cli(capsys, monkeypatch, text, "render")
    assert code == 0, err
    config_map = next(yaml.safe_load_all(out))
    expected = render(parse_job(job), OperatorSettings.from_env(), "ml").manifests()[0]
    assert config_map["data"] == expected["data"]  # exactly what the operator creates
    assert yaml.safe_load(config_map["data"]["config.yaml"])["chat_template_jinja"] == TEMPLATE


def test_convert_keeps_slash_slash_lines_in_yaml_and_drops_them_from_json(tmp_path, capsys):
    native = tmp_path / "native.yaml"
    native.write_text(dump({**CONFIG, "chat_template": "jinja", "chat_template_jinja": TEMPLATE}))
    assert main(["convert", str(native)]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert job["spec"]["config"]["chat_template_jinja"] == TEMPLATE
    request = tmp_path / "request.json"
    request.write_text(
        "// a request body\n" + json.dumps(body(), indent=2).replace("{\n", "{\n  // note\n", 1)
    )
    assert main(["convert", str(request)]) == 0, capsys.readouterr().err


# --- YAML limits: each refusal is quick, whatever the input ------------------------------------------------

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_and_ordinary_anchors_still_work(capsys, monkeypatch):
    ordinary = "defaults: &d {path: a, type: alpaca}\ndatasets: [*d, {<<: *d, path: b}]\n"
    datasets = [{"path": "a", "type": "alpaca"}, {"path": "b", "type": "alpaca"}]
    assert load_all(ordinary) == [{"defaults": datasets[0], "datasets": datasets}]
    with pytest.raises(YAMLLimitError, match="once aliases are expanded"):
        load_all(BILLION_LAUGHS)
    with pytest.raises(YAMLLimitError, match="contains it"):
        load_all("a: &a [1, *a]")
    bomb = yaml.safe_dump(manifest()) + BILLION_LAUGHS  # the job's document, plus nine keys of laughs
    code, _, err = cli(capsys, monkeypatch, bomb, "validate")
    assert code == 1 and "an alias bomb?" in err and "Traceback" not in err


def test_nesting_deeper_than_the_limit_is_refused(capsys, monkeypatch):
    assert load_all("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(YAMLLimitError, match=f"nested more than {MAX_DEPTH}"):
        load_all("[" * 500 + "]" * 500)
    block = "".join("  " * level + f"k{level}:\n" for level in range(500))
    code, _, err = cli(capsys, monkeypatch, block, "validate")
    assert code == 1 and f"nested more than {MAX_DEPTH}" in err and "Traceback" not in err


def test_an_oversized_document_is_refused(tmp_path, capsys):
    with pytest.raises(YAMLLimitError, match="larger than 4 MiB"):
        load_all("a: " + "x" * MAX_INPUT_BYTES)
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(manifest()) + "# padding\n" * (MAX_INPUT_BYTES // 10 + 1))
    assert main(["validate", str(big)]) == 1
    err = capsys.readouterr().err
    assert f"{big}: error: the input is larger than 4 MiB" in err
