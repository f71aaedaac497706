"""`--push-to-hub` against a Hub-compatible server on 127.0.0.1, and loading the pushed repo back."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURE_OPTIONS, FIXTURE_WEIGHTS, checkpoint_layers
from hub_server import FakeHub

from hf_elmo.cli import main as cli_main
from hf_elmo.hub import HubPushError, push_checkpoint_folder

REPO_ID = "elmo-tests/elmo-tiny"
CONVERT = ["convert", "--options-file", str(FIXTURE_OPTIONS), "--weight-file", str(FIXTURE_WEIGHTS)]

LOAD_SCRIPT = r"""
import sys
import numpy as np, torch
import hf_elmo
from transformers import AutoModel, AutoTokenizer
repo, folder, out = sys.argv[1:4]
sentences = [["The", "cat", "sat", "on", "the", "mat", "."], ["Colorless", "green", "ideas", "sleep", "furiously"]]
results = {}
for name, source in (("hub", repo), ("local", folder)):  # the Hub repo by id, and the folder it was pushed from
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    assert type(model).__name__ == "ElmoModel", type(model)
    enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        results[name] = torch.stack(model(**enc, output_hidden_states=True).hidden_states).numpy()
np.savez(out, **results)
"""


def folder_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def hub(monkeypatch):
    """A fresh fake Hub; this process's huggingface_hub is pointed at it (HF_ENDPOINT, HF_TOKEN, no Xet)."""
    from huggingface_hub import constants

    with FakeHub() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # read at import time
        yield server


def test_convert_push_then_load_back_from_the_hub(tmp_path, hub):
    """The whole command in a fresh process (HF_ENDPOINT / HF_TOKEN from the environment), then from_pretrained."""
    out = tmp_path / "elmo-tiny"
    env = {**os.environ, **hub.env(token="hf_secret_42"), "HF_HOME": str(tmp_path / "hf-home"),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "hf_elmo.cli", *CONVERT, "--output-dir", str(out), "--push-to-hub", REPO_ID,
         "--private", "--commit-message", "Add tiny ELMo"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pushed {out} to {REPO_ID}@main" in result.stdout

    repo = hub.repos[REPO_ID]
    assert repo.private
    remote = repo.files("main")
    local = folder_digests(out)
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md", "modeling_elmo.py",
            "configuration_elmo.py", "tokenization_elmo.py"} <= local.keys()
    for name, digest in local.items():  # every file, byte for byte
        assert hashlib.sha256(remote[name].data).hexdigest() == digest, name
    assert remote["model.safetensors"].lfs
    assert repo.messages[repo.branches["main"]] == "Add tiny ELMo"
    assert len(repo.commits) == 2  # the repository's initial commit + one commit with everything
    api_auth = {auth for method, path, auth in hub.requests if path.startswith("/api/")}
    assert api_auth == {"Bearer hf_secret_42"}

    load = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, REPO_ID, str(out), str(tmp_path / "outputs.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert load.returncode == 0, load.stderr[-3000:]
    assert any(path.endswith("/resolve/" + repo.branches["main"] + "/model.safetensors") or
               path.endswith("/resolve/main/model.safetensors") for _, path, _ in hub.requests)
    outputs = np.load(tmp_path / "outputs.npz")
    assert outputs["hub"].shape == (3, 2, 7, 32)
    assert np.array_equal(outputs["hub"], outputs["local"])
    assert np.allclose(outputs["hub"], checkpoint_layers(out).numpy(), atol=1e-6)


def test_second_push_of_the_same_checkpoint_changes_nothing(tmp_path, hub, capsys):
    out = tmp_path / "elmo-tiny"
    assert cli_main([*CONVERT, "--output-dir", str(out), "--push-to-hub", REPO_ID]) == 0
    head = hub.repos[REPO_ID].branches["main"]
    uploads = sum(method == "PUT" for method, _, _ in hub.requests)
    capsys.readouterr()
    first = len(hub.requests)

    assert cli_main([*CONVERT, "--output-dir", str(out), "--push-to-hub", REPO_ID]) == 0  # converts again, pushes again
    assert "nothing to push" in capsys.readouterr().out
    assert hub.repos[REPO_ID].branches["main"] == head and hub.commit_count(REPO_ID) == 2
    assert sum(method == "PUT" for method, _, _ in hub.requests) == uploads  # no LFS upload either
    assert not any("/commit/" in path for _, path, _ in hub.requests[first:])

    result = push_checkpoint_folder(out, REPO_ID)
    assert not result.changed and result.commit_oid == head


def test_push_to_a_new_branch_leaves_main_alone(tmp_path, hub, converted_fixture):
    result = push_checkpoint_folder(converted_fixture, REPO_ID, revision="v1")
    repo = hub.repos[REPO_ID]
    assert result.changed and result.revision == "v1" and repo.branches["v1"] == result.commit_oid
    assert "model.safetensors" in repo.files("v1") and "model.safetensors" not in repo.files("main")
    again = push_checkpoint_folder(converted_fixture, REPO_ID, revision="v1")
    assert not again.changed and repo.branches["v1"] == result.commit_oid


@pytest.mark.parametrize(
    ("step", "status", "message", "expected"),
    [
        ("commit", 500, "storage backend unavailable", "failed while uploading the folder"),
        ("lfs_put", 403, "upload URL expired", "failed while uploading the folder"),
        ("create", 401, "Invalid credentials in Authorization header", "failed while creating the repository"),
    ],
)
def test_failed_push_says_what_failed_and_keeps_the_folder(tmp_path, hub, capsys, step, status, message, expected):
    out = tmp_path / "elmo-tiny"
    hub.fail[step] = (status, message)
    assert cli_main([*CONVERT, "--output-dir", str(out), "--push-to-hub", REPO_ID]) == 2
    err = capsys.readouterr().err
    assert f"push to {REPO_ID} at {hub.url} {expected}" in err, err
    assert str(status) in err and "Traceback" not in err
    assert f"local checkpoint {out} is intact" in err
    digests = folder_digests(out)
    assert {"model.safetensors", "config.json", "README.md"} <= digests.keys()

    del hub.fail[step]  # fixed: the same push now goes through, and the folder was not touched by the failure
    assert push_checkpoint_folder(out, REPO_ID).changed
    assert folder_digests(out) == digests
    assert hashlib.sha256(hub.repos[REPO_ID].files()["model.safetensors"].data).hexdigest() == digests["model.safetensors"]


def test_unreachable_hub_and_incomplete_folder(tmp_path, monkeypatch, converted_fixture):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with FakeHub() as dead:
        url = dead.url  # closed when the block ends: nothing listens there any more
    with pytest.raises(HubPushError, match="failed while creating the repository"):
        push_checkpoint_folder(converted_fixture, REPO_ID, endpoint=url)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(HubPushError, match="missing model.safetensors, tokenizer_config.json, README.md"):
        push_checkpoint_folder(tmp_path / "half", REPO_ID, endpoint=url)
