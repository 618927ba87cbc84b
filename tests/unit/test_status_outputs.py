"""status.outputs: the runner's summary is the container's word, so only clean values reach the status."""

from __future__ import annotations

import pytest
from axolotl_operator.status.model import JobFacts
from axolotl_operator.status.outputs import clean_path, clean_repo_id, clean_url, outputs_of

FACTS = JobFacts(output_dir="/workspace/data/outputs/job")


@pytest.mark.parametrize(
    "value",
    [
        "https://huggingface.co/me/model",
        "http://hub.internal:8080/me/model",
        "https://wandb.ai/team/project/runs/1a2b3c",
    ],
)
def test_clean_urls_are_kept(value):
    assert clean_url(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "https://user:hf_secret@huggingface.co/me/model",  # credentials in the URL
        "https://token@huggingface.co/me/model",
        "https://huggingface.co/me/model?token=hf_abc",  # a query may carry a token
        "https://huggingface.co/me/model#frag",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https:///no-host",
        "https://huggingface.co:99999/me",  # malformed port
        "https://huggingface.co/a\nb",
        "https://huggingface.co/" + "a" * 600,
        42,
        None,
    ],
)
def test_unclean_urls_are_dropped(value):
    assert clean_url(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/workspace/data/out", "/workspace/data/out"),
        ("/workspace/data/out/checkpoint-5", "/workspace/data/out/checkpoint-5"),
        ("relative/out", None),
        ("/workspace/../etc", None),
        ("/workspace/data/\x1b[31mred", None),
        ("/" + "a" * 2000, None),
        (["/a"], None),
    ],
)
def test_paths(value, expected):
    assert clean_path(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("me/model", "me/model"), ("model", "model"), ("me/model/x", None), ("-x", None), ("a b", None)],
)
def test_repo_ids(value, expected):
    assert clean_repo_id(value) == expected


def test_result_prefers_the_hub_then_full_weights_then_the_adapter():
    adapter = {"adapterPath": "/workspace/data/out"}
    assert outputs_of({}, adapter, FACTS).result == "/workspace/data/out"
    merged = {**adapter, "modelPath": "/workspace/data/out/merged"}
    assert outputs_of({}, merged, FACTS).result == "/workspace/data/out/merged"
    pushed = {**merged, "hubUrl": "https://huggingface.co/me/m"}
    assert outputs_of({}, pushed, FACTS).result == "https://huggingface.co/me/m"


def test_a_hostile_summary_changes_nothing_but_keeps_what_was_known():
    previous = {
        "outputDir": "/workspace/data/outputs/job",
        "lastCheckpoint": "/workspace/data/outputs/job/checkpoint-2",
    }
    hostile = {
        "outputDir": "../../etc",
        "lastCheckpoint": "/x/../../y",
        "hubUrl": "https://u:p@evil.example/x",
        "wandbUrl": "https://wandb.ai/x?api_key=secret",
        "hubModelId": "a/b/c/d",
    }
    outputs = outputs_of(previous, hostile, FACTS)
    assert outputs is not None
    shown = outputs.model_dump(by_alias=True, exclude_none=True)
    assert shown == previous
    assert "secret" not in repr(shown) and ":p@" not in repr(shown)


def test_no_summary_no_facts_no_outputs():
    assert outputs_of({}, None, JobFacts()) is None
