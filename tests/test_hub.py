"""Sources on the Hugging Face Hub, from a cache built here (nothing is
downloaded): grow, plan and inspect take `org/name`, record the repo and
the commit, verify finds the same files again, a local path of that name
wins, and what is neither is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import family_model, perturbed
from test_side_files import _tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub(tmp_path) -> dict:
    """An HF_HOME whose cache holds org/tiny at COMMIT (a tiny Llama with its tokenizer), offline."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--org--tiny"
    cls, config = family_model("llama")
    perturbed(cls(config)).save_pretrained(repo / "snapshots" / COMMIT)
    _tokenizer().save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def cli(env: dict, cwd: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ws_convert.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_grow_takes_a_repo_id_and_records_its_commit(tmp_path, hub):
    done = cli(hub, tmp_path, "grow", "org/tiny", "--to-width", 64, "-q")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "tiny-w64"  # named after the repo, in the current directory
    record = json.loads((out / "ws_convert.json").read_text())
    assert (record["source"]["hub_repo_id"], record["source"]["hub_revision"]) == ("org/tiny", COMMIT)
    assert (out / "tokenizer.json").is_file()
    assert cli(hub, tmp_path, "verify", out).returncode == 0
    info = json.loads(cli(hub, tmp_path, "inspect", "org/tiny", "--revision", "main", "--json").stdout)
    assert info["width"] == 32 and info["arch"] == "llama"
    assert "width 32 -> 64" in cli(hub, tmp_path, "plan", "org/tiny", "--to-width", 64).stdout


def test_a_local_directory_of_that_name_wins(tmp_path, hub):
    cls, config = family_model("qwen3")
    perturbed(cls(config)).save_pretrained(tmp_path / "org" / "tiny")
    info = json.loads(cli(hub, tmp_path, "inspect", "org/tiny", "--json").stdout)
    assert info["path"].startswith("org/tiny") and Path(info["path"]).parts[:2] == ("org", "tiny")


@pytest.mark.parametrize("args,needle", [
    (("inspect", "org/missing"), "not found on the Hugging Face Hub"),
    (("inspect", "org/tiny", "--revision", "v9"), "at revision v9"),
])
def test_what_is_neither_here_nor_cached_is_one_line(tmp_path, hub, args, needle):
    done = cli(hub, tmp_path, *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr


def test_revision_of_a_local_path_is_refused(tmp_path, hub):
    cls, config = family_model("llama")
    perturbed(cls(config)).save_pretrained(tmp_path / "local")
    done = cli(hub, tmp_path, "inspect", "local", "--revision", "main")
    assert done.returncode == 2 and "--revision names a Hub revision" in done.stderr
