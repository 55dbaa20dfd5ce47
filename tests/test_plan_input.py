"""Bad sizes, dtypes and base shapes are refused through the command line with
exit 2 and one line naming the file (and key or tensor), and nothing is
written; tensors in dtypes the op cannot compute are copied unchanged when
they are buffers."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from models import tiny
from ws_convert.cli import main
from ws_convert.plan import GrowthOptions, Source, make_plan, write_base_shapes
from ws_convert.reader import open_checkpoint
from ws_convert.torch_dtypes import NAMES


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny GPT-2 and Llama checkpoints with their configs, saved once."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in ("gpt2", "llama"):
        cls, config = tiny(kind)
        torch.manual_seed(0)
        cls(config).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def with_config(saved: Path, tmp_path: Path, **changes) -> Path:
    """A copy of a saved checkpoint whose config.json has `changes` (None
    values stay, use `drop=[...]` to remove keys)."""
    drop = changes.pop("drop", [])
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").symlink_to(saved / "model.safetensors")
    config = json.loads((saved / "config.json").read_text())
    config.update(changes)
    for key in drop:
        config.pop(key, None)
    (src / "config.json").write_text(json.dumps(config))
    return src


def refused(args: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with one line holding every needle."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ws-convert: error: "), res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def refused_everywhere(src: Path, tmp_path: Path, *needles: str, args: tuple = ("--to-width", 128)) -> None:
    """plan, grow --dry-run and grow all refuse; grow writes nothing."""
    before = sorted(tmp_path.iterdir())
    refused(["plan", src, *args], *needles)
    refused(["grow", src, *args, "-o", tmp_path / "out", "--dry-run"], *needles)
    refused(["grow", src, *args, "-o", tmp_path / "out"], *needles)
    assert sorted(tmp_path.iterdir()) == before


# -- config sizes ---------------------------------------------------------------

@pytest.mark.parametrize("kind,changes,key", [
    ("llama", dict(num_attention_heads=0, drop=["head_dim"]), "num_attention_heads"),
    ("llama", dict(num_attention_heads=128, drop=["head_dim"]), "num_attention_heads"),  # head_dim 0
    ("gpt2", dict(n_head=128), "n_head"),
    ("gpt2", dict(n_head=3), "n_head"),  # 64 does not split into 3 heads
    ("llama", dict(num_hidden_layers=0), "num_hidden_layers"),
    ("llama", dict(num_hidden_layers=3), "num_hidden_layers"),  # two layers on disk
    ("llama", dict(num_hidden_layers=10**400), "num_hidden_layers"),
    ("gpt2", dict(n_layer=10**12), "n_layer"),
    ("llama", dict(hidden_size=-64), "hidden_size"),
    ("llama", dict(hidden_size=64.0), "hidden_size"),
    ("llama", dict(hidden_size=10**30), "hidden_size"),
    ("llama", dict(num_attention_heads="4"), "num_attention_heads"),
    ("llama", dict(num_key_value_heads=True), "num_key_value_heads"),
    ("llama", dict(num_key_value_heads=3), "num_key_value_heads"),
    ("llama", dict(num_attention_heads=None), "num_attention_heads"),
    ("llama", dict(head_dim=8), "head_dim"),
    ("llama", dict(head_dim=0), "head_dim"),
    ("llama", dict(intermediate_size=100), "intermediate_size"),
    ("llama", dict(intermediate_size=[128]), "intermediate_size"),
    ("llama", dict(vocab_size=50), "vocab_size"),
    ("llama", dict(max_position_embeddings=-1), "max_position_embeddings"),
    ("gpt2", dict(n_inner=100), "n_inner"),
    ("gpt2", dict(n_positions=32), "n_positions"),
    ("gpt2", dict(n_embd=float("nan")), "n_embd"),
], ids=lambda v: str(v)[:40] if not isinstance(v, dict) else "-".join(f"{k}={str(x)[:12]}" for k, x in v.items()))
def test_bad_config_sizes(saved, tmp_path, kind, changes, key):
    src = with_config(saved[kind], tmp_path, **changes)
    refused_everywhere(src, tmp_path, str(src / "config.json"), f"'{key}'")


def test_odd_sizes_that_fit_their_tensors_still_grow(saved, tmp_path):
    """null where the family has a default, and a head_dim not width / heads
    that the tensors agree with, are fine."""
    src = with_config(saved["gpt2"], tmp_path, n_inner=None)
    res = CliRunner().invoke(main, ["grow", str(src), "--to-width", "128", "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output


def meta_source(kind: str, changes: dict | None = None, **attrs) -> tuple[type, Source]:
    """A tiny model (with config `attrs`) as tensor shapes, built on the meta
    device, and its config with `changes` (a None value drops the key)."""
    cls, config = tiny(kind)
    for key, value in attrs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        state = cls(config).state_dict()
    if kind == "gpt2":
        state.pop("lm_head.weight")
    cfg = config.to_dict()
    for key, value in (changes or {}).items():
        cfg.pop(key) if value is None else cfg.__setitem__(key, value)
    return cls, Source("m.safetensors", {n: (NAMES[v.dtype], tuple(v.shape)) for n, v in state.items()}, cfg,
                       config_path="config.json")


def loaded_shapes(cls: type, config: dict) -> dict[str, tuple[int, ...]]:
    """The tensor shapes transformers makes of a config."""
    with torch.device("meta"):
        return {n: tuple(v.shape) for n, v in cls(cls.config_class.from_dict(dict(config))).state_dict().items()}


@pytest.mark.parametrize("kind,changes,options", [
    ("qwen2", {}, dict(to_depth=4)),  # layer_types must grow with the layers
    ("qwen3", {}, dict(to_depth=3, depth_policy="init")),
    ("qwen3", {"head_dim": None}, {}),  # Qwen3 reads a missing head_dim as 128
    ("llama", {"intermediate_size": None, "vocab_size": None}, {}),  # LlamaConfig's defaults are 11008, 32000
    ("mistral", {"hidden_size": None}, dict(head_policy="head-dim")),
    ("gpt2", {"n_positions": None}, {}),  # GPT2Config's default is 1024
    ("gpt2", {"hidden_size": 64}, {}),  # GPT2Config lets hidden_size override n_embd
    ("gpt2", {"n_inner": 256}, dict(to_ffn=1000)),
    ("llama", {}, dict(head_policy="head-dim", head_dim=32)),  # heads of their own size: 4 x 32 on width 64
], ids=lambda v: str(v)[:30])
def test_grown_config_reads_as_the_grown_tensors(kind, changes, options):
    """What transformers builds from the grown config has the planned shapes
    (a config that leaves a size out gets the family's default, not ours)."""
    attrs = {"head_dim": options.pop("head_dim")} if "head_dim" in options else {}
    cls, source = meta_source(kind, changes, **attrs)
    plan = make_plan(source, GrowthOptions(to_width=128, **options))
    expected = loaded_shapes(cls, plan.config)
    assert {t.name: t.shape for t in plan.tensors if t.name in expected} == {
        n: s for n, s in expected.items() if n in {t.name for t in plan.tensors}}


def test_width_not_split_by_heads_keeps_its_head_dim(tmp_path):
    """Width 66 in 4 heads of 16 (no head_dim key): under the head-dim policy
    the grown heads are 32 wide at width 132, which a reader of the config
    would derive as 33, so the grown config states head_dim."""
    cls, source = meta_source("llama", {"head_dim": None})
    widened = {n: (d, tuple(66 if x == 64 else x for x in s)) for n, (d, s) in source.tensors.items()}
    for n, (d, s) in widened.items():  # the attention keeps 4 x 16 and 2 x 16 rows
        if "q_proj" in n or "k_proj" in n or "v_proj" in n:
            widened[n] = (d, (64 if "q_proj" in n else 32, 66))
        elif "o_proj" in n:
            widened[n] = (d, (66, 64))
    source = Source(source.path, widened, {**source.config, "hidden_size": 66}, config_path="config.json")
    plan = make_plan(source, GrowthOptions(to_width=132, head_policy="head-dim"))
    assert plan.config["head_dim"] == plan.target.head_dim == 32 and plan.config["hidden_size"] == 132
    assert make_plan(source, GrowthOptions(to_width=132)).config["head_dim"] == 16  # 8 heads of 16


@pytest.mark.parametrize("tamper,key", [
    (lambda c: c.pop("head_dim"), "head_dim"),
    (lambda c: c.update(num_hidden_layers=3), "num_hidden_layers"),
    (lambda c: c.update(num_key_value_heads=8), "num_key_value_heads"),
    (lambda c: c.update(layer_types=c["layer_types"][:1]), "layer_types"),
])
def test_a_grown_config_that_disagrees_is_never_planned(monkeypatch, tamper, key):
    """The grown config is read back and checked against the grown tensors,
    so a config the planner got wrong is refused, not written."""
    planning = importlib.import_module("ws_convert.plan")  # the package's `plan` is the API function
    made = planning._grown_config

    def wrong(*args):
        config = made(*args)
        tamper(config)
        return config

    monkeypatch.setattr(planning, "_grown_config", wrong)
    _, source = meta_source("qwen3", {"head_dim": None})
    from ws_convert.errors import PlanError
    with pytest.raises(PlanError, match=f"'{key}'"):
        make_plan(source, GrowthOptions(to_width=128, head_policy="head-dim"))


def test_bare_checkpoint_sizes(tmp_path):
    """Without a config: zero-width weights, no layers, a --num-heads that
    leaves no room for a head."""
    cls, config = tiny("gpt2")
    state = cls(config).state_dict()
    state.pop("lm_head.weight")
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file({n: t.contiguous() for n, t in state.items()}, bare / "model.safetensors")
    refused(["plan", bare, "--to-width", 128, "--num-heads", 128], "--num-heads")
    refused(["plan", bare, "--to-width", 128, "--num-heads", 4, "--num-kv-heads", 3], "--num-kv-heads")
    flat = tmp_path / "zero"
    flat.mkdir()
    zero = {n: torch.zeros(tuple(0 if d == 64 else d for d in t.shape)) for n, t in state.items()}
    save_file(zero, flat / "model.safetensors")
    refused(["plan", flat, "--to-width", 128, "--num-heads", 4], "transformer.wte.weight", "width 0")
    none = tmp_path / "none"
    none.mkdir()
    save_file({n: t.contiguous() for n, t in state.items() if ".h." not in n}, none / "model.safetensors")
    refused(["plan", none, "--to-width", 128, "--num-heads", 4], str(none / "model.safetensors"), "no layer")


@pytest.mark.parametrize("config,key", [
    ({"hidden_size": 0}, "hidden_size"),
    ({"hidden_size": -8}, "hidden_size"),
    ({"hidden_size": "8"}, "hidden_size"),
    ({"hidden_size": 8, "intermediate_size": 0}, "intermediate_size"),
    ({"hidden_size": 8, "num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": 8, "num_attention_heads": 3}, "num_attention_heads"),  # 16 does not split into 3
    ({"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1}, "num_key_value_heads"),
])
def test_generic_config_sizes(tmp_path, config, key):
    src = tmp_path / "src"
    src.mkdir()
    save_file({"embed.weight": torch.randn(10, 8), "block.w": torch.randn(8, 8)}, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps(config))
    refused(["plan", src, "--to-width", 16, "--arch", "generic"], str(src / "config.json"), f"'{key}'")


def test_generic_adds_heads_of_the_same_head_dim(tmp_path):
    grown_config = make_plan(Source("m", {"w": ("F32", (8, 8))}, {"hidden_size": 8, "num_attention_heads": 2,
                                                               "head_dim": 4}),
                             GrowthOptions(to_width=16, arch="generic")).config
    assert grown_config == {"hidden_size": 16, "num_attention_heads": 4, "head_dim": 4}


@pytest.mark.parametrize("option,value", [("shrink", "nan"), ("perturb", "inf"), ("init-std", "1e300")])
def test_knobs_beyond_float32(saved, tmp_path, option, value):
    refused(["plan", saved["llama"], "--to-width", 128, f"--{option}", value], f"--{option}")


@pytest.mark.parametrize("options,needle", [
    (dict(shrink=10**400), "--shrink"), (dict(perturb="1"), "--perturb"), (dict(init_std=None), "--init-std"),
    (dict(seed=-1), "--seed"), (dict(seed=2**64), "--seed"), (dict(to_width=128.0), "--to-width"),
    (dict(to_depth=0), "--to-depth"), (dict(to_ffn=True), "--to-ffn"), (dict(num_heads=-4), "--num-heads"),
])
def test_api_options_that_cannot_be_planned(saved, options, needle):
    """What the command line's types keep out, the Python API is refused too."""
    from ws_convert.api import plan
    from ws_convert.errors import PlanError

    with pytest.raises(PlanError, match=needle):
        plan(saved["llama"], **{"to_width": 128, **options})


@pytest.mark.parametrize("args,needle", [
    (["--to-width", 10**30], "--to-width"),
    (["--to-width", 128, "--to-depth", 10**12], "--to-depth"),
    (["--to-width", 128, "--to-ffn", 10**30], "--to-ffn"),
])
def test_absurd_targets(saved, tmp_path, args, needle):
    refused(["plan", saved["llama"], *args], needle)


# -- dtypes ---------------------------------------------------------------------

def gpt2_with_buffers(tmp_path: Path, mask_dtype: torch.dtype, **override: torch.Tensor) -> Path:
    """A tiny GPT-2 in the old layout that stored the causal mask per layer."""
    cls, config = tiny("gpt2")
    torch.manual_seed(0)
    state = {n: t.contiguous() for n, t in cls(config).state_dict().items() if n != "lm_head.weight"}
    for i in range(config.n_layer):
        mask = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"transformer.h.{i}.attn.bias"] = mask.to(mask_dtype)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    state.update(override)
    src = tmp_path / f"gpt2-{str(mask_dtype).removeprefix('torch.')}"
    src.mkdir()
    save_file(state, src / "model.safetensors")
    (src / "config.json").write_text(config.to_json_string())
    return src


MASK_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float64,
               torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=str)
def test_buffers_in_any_dtype_are_copied_unchanged(tmp_path, dtype):
    src = gpt2_with_buffers(tmp_path, dtype)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["grow", str(src), "--to-width", "128", "--to-depth", "4", "--depth-policy",
                                    "init", "--dtype", "bfloat16", "-o", str(out), "-q"])
    assert res.exit_code == 0, (res.output, res.exception)
    before = open_checkpoint(src / "model.safetensors")
    after = open_checkpoint(out)
    for i in range(4):  # new layers get the mask of layer 0: a buffer is not a parameter to initialise
        name = f"transformer.h.{i}.attn.bias"
        source = name.replace(f".{i}.", f".{i if i < 2 else 0}.")
        assert after.info(name).dtype == NAMES[dtype]  # --dtype converts only what the op computes
        assert bytes(after.buffer(name, 0, 1)) == bytes(before.buffer(source, 0, 1))
    assert after.info("transformer.h.0.attn.c_attn.weight").dtype == "BF16"
    assert after.info("transformer.h.0.attn.masked_bias").dtype == "BF16"  # a float buffer still converts
    from ws_convert.verify import verify
    assert verify(out).ok


def test_buffer_copies_are_the_same_bytes_on_every_path(tmp_path, monkeypatch):
    """The compiled stream (small chunks sharing slots), the torch stream and
    the in-memory grow give the same bytes, and verify agrees."""
    from ws_convert import _ext
    from ws_convert.engine import grow, grow_state_dict
    from ws_convert.verify import verify

    src = gpt2_with_buffers(tmp_path, torch.uint8)
    native = grow(src, 128, out=tmp_path / "native", chunk_bytes=5000, to_depth=4).out
    ref = (native / "model.safetensors").read_bytes()
    grown, _ = grow_state_dict(load_file(src / "model.safetensors"), 128, to_depth=4,
                               config=json.loads((src / "config.json").read_text()))
    on_disk = load_file(native / "model.safetensors")
    assert all(torch.equal(on_disk[n].view(torch.uint8), t.view(torch.uint8)) for n, t in grown.items()
               if t.dim())  # 0-d ones cannot be viewed as bytes; masked_bias is a float
    monkeypatch.setattr(_ext, "cpu", None)
    assert (grow(src, 128, out=tmp_path / "torch", chunk_bytes=5000, to_depth=4).out
            / "model.safetensors").read_bytes() == ref
    assert verify(native, chunk_bytes=5000).ok


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.uint8, torch.bool, torch.float64,
                                   torch.float8_e5m2, torch.complex64], ids=str)
def test_weights_the_op_cannot_compute_are_refused_at_plan_time(tmp_path, dtype):
    wte = torch.ones(97, 64).to(dtype)
    src = gpt2_with_buffers(tmp_path, torch.bool, **{"transformer.wte.weight": wte})
    refused_everywhere(src, tmp_path, str(src / "model.safetensors"), "'transformer.wte.weight'", NAMES[dtype],
                       "F32, BF16 or F16")
    res = CliRunner().invoke(main, ["inspect", str(src)])  # inspect only describes
    assert res.exit_code == 0 and NAMES[dtype] in res.output


def test_generic_copies_non_float_buffers(tmp_path):
    tensors = {"embed.weight": torch.randn(10, 8), "position_ids": torch.arange(5).view(1, 5),
               "mask": torch.ones(5, 5, dtype=torch.bool), "scale": torch.full((3,), 0.5, dtype=torch.float8_e4m3fn),
               "phase": torch.randn(3, dtype=torch.complex64), "count": torch.tensor(7, dtype=torch.int64)}
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({"hidden_size": 8, "num_attention_heads": 1}))
    res = CliRunner().invoke(main, ["grow", str(src), "--to-width", "16", "--arch", "generic", "-o",
                                    str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, (res.output, res.exception)
    grown = load_file(tmp_path / "out" / "model.safetensors")
    for name, t in tensors.items():
        if name != "embed.weight":
            assert grown[name].dtype == t.dtype and torch.equal(grown[name].reshape(-1).view(torch.uint8),
                                                                t.reshape(-1).view(torch.uint8)), name
    (src / "model.safetensors").unlink()
    save_file({**tensors, "block.w": torch.ones(8, 8, dtype=torch.int16)}, src / "model.safetensors")
    shutil.rmtree(tmp_path / "out")
    refused_everywhere(src, tmp_path, "'block.w'", "I16", args=("--to-width", 16, "--arch", "generic"))


# -- base shapes ------------------------------------------------------------------

Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"


def base_file(saved: Path, tmp_path: Path, text: str | bytes | None = None, **override: str) -> Path:
    """The source's own base shapes with some lines replaced by `override`
    (tensor name -> YAML text of its value), or `text` as is."""
    path = tmp_path / "base.bsh"
    if text is None:
        with open_checkpoint(saved) as ckpt:
            base = make_plan(Source.of(ckpt), GrowthOptions(to_width=128)).base_shapes
        text = "".join(f"{name}: {override[name]}\n" if name in override else line
                       for line in write_base_shapes(base).splitlines(keepends=True)
                       for name in [line.split(":")[0]])
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize("value,tensor", [
    ("[-1, 64]", Q), ("[64, -64]", Q), ("[0, 64]", Q), ("[64, 0]", Q), ("[]", Q), ("[64]", Q),
    ("[64, 64, 64]", Q), ("[1.5, 64]", Q), ("[a, 64]", Q), ("[true, 64]", Q), (f"[64, {10**30}]", Q),
    (f"[64, {10**400}]", Q), ("[[64]]", NORM), ("{a: 1}", NORM), ("null", NORM), ("64", NORM), ("", NORM),
], ids=lambda v: v[:24] if v not in (Q, NORM) else v.split(".")[-2])
def test_bad_base_shape_values(saved, tmp_path, value, tensor):
    bsh = base_file(saved["llama"], tmp_path, **{tensor: value})
    before = sorted(tmp_path.iterdir())
    args = ["--to-width", 128, "--base-shapes", bsh]
    refused(["plan", saved["llama"], *args], str(bsh), f"'{tensor}'")
    refused(["grow", saved["llama"], *args, "-o", tmp_path / "out"], str(bsh), f"'{tensor}'")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("text", [
    "", "\n", "[1, 2]\n", "just words\n", "a: [1,\n", "a: {b: [1, 2]\n", "- [\n" * 3,
    "[" * 20000 + "]" * 20000 + "\n", "a: " + "[" * 20000 + "]" * 20000 + "\n",
    b"\xff\xfe\x00 not text", "model.norm.weight: [64]\n", "? [1, 2]\n: [1]\n", "a: &x [1]\nb: *x\n",
    "!!python/object/apply:os.system ['true']\n",
], ids=["empty", "newline", "list", "words", "open-list", "open-map", "open-lists", "deep-list", "deep-value",
        "binary", "missing-tensors", "list-key", "alias", "python-tag"])
def test_malformed_base_shape_files(saved, tmp_path, text):
    bsh = base_file(saved["llama"], tmp_path, text)
    refused(["plan", saved["llama"], "--to-width", 128, "--base-shapes", bsh], str(bsh))


def test_base_shapes_that_are_not_a_file(saved, tmp_path):
    import os
    fifo = tmp_path / "fifo.bsh"
    os.mkfifo(fifo)  # reading it would block forever
    refused(["plan", saved["llama"], "--to-width", 128, "--base-shapes", fifo], str(fifo))
    refused(["plan", saved["llama"], "--to-width", 128, "--base-shapes", tmp_path / "missing.bsh"],
            "missing.bsh")
