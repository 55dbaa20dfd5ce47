"""Every Python example in README.md runs as written, in a fresh directory,
against files it creates itself or the package ships."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


def test_szp_reference_takes_szp_arguments():
    """The reference is the oracle: the same call, the same bytes as the kernel."""
    from ws_convert import Normal, pad_maps, szp, szp_reference, tensor_id

    small = torch.randn(64, 48) * 0.02
    args = (small, (128, 96), pad_maps(small.shape))
    kw = dict(shrink=0.4, perturb=1.0, init=Normal(0.02), seed=3, tid=tensor_id("w"))
    assert torch.equal(szp_reference(*args, **kw), szp(*args, **kw))
