"""Without the compiled core the package still imports and computes the same
bytes through the PyTorch reference."""

import subprocess
import sys
import textwrap


def test_works_without_extension():
    code = textwrap.dedent("""
        import sys
        sys.modules["ws_convert._C"] = None      # make both imports fail
        sys.modules["ws_convert._C_cuda"] = None
        import torch
        from ws_convert import _ext, pad_maps, szp
        assert _ext.cpu is None and _ext.cuda is None
        torch.manual_seed(0)
        src = torch.randn(5, 6, dtype=torch.bfloat16)
        out = szp(src, (10, 12), pad_maps(src.shape), tid=3)
        torch.save(out, sys.argv[1])
    """)
    import tempfile

    import torch

    from ws_convert import _ext, pad_maps, szp

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/out.pt"
        subprocess.run([sys.executable, "-c", code, path], check=True)
        fallback = torch.load(path)
    torch.manual_seed(0)
    src = torch.randn(5, 6, dtype=torch.bfloat16)
    backend = "cpu" if _ext.cpu is not None else "reference"
    compiled = szp(src, (10, 12), pad_maps(src.shape), tid=3, backend=backend)
    assert torch.equal(fallback.view(torch.int16), compiled.view(torch.int16))
