"""Is a grown mixture of experts of 20,000+ tensors written as fast per byte
as a dense model of the same size?

Two bf16 sources of the same width, depth and MLP bytes: a Mixtral whose
layers hold E experts of MLP size F (3 E tensors per layer, plus its
router), and a Llama whose one MLP per layer has size E x F. Both are
grown 2x in width, natively. Each contender is a fresh process timing its
`ws_convert.grow(...)` call; they alternate, best of --repeats. Printed:
output bytes per second of each, the ratio moe / dense, and the time
each extra tensor costs (what the MoE run takes beyond the dense rate).

    python benchmarks/bench_moe.py [--layers 16] [--experts 420] [--width 64] [--ffn 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_many_tensors import run


def make_source(directory: Path, experts: int, layers: int, width: int, ffn: int) -> int:
    """A random bf16 Mixtral (experts > 0) or Llama (experts 0, one MLP of
    ffn) with 4 heads; returns its tensor count."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
    tensors = {"model.embed_tokens.weight": rand(256, width), "model.norm.weight": rand(width),
               "lm_head.weight": rand(256, width)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": rand(width), p + "post_attention_layernorm.weight": rand(width),
                        **{p + f"self_attn.{n}_proj.weight": rand(width, width) for n in "qkvo"}})
        if experts:
            moe = p + "block_sparse_moe."
            tensors[moe + "gate.weight"] = rand(experts, width)
            for e in range(experts):
                tensors.update({moe + f"experts.{e}.w1.weight": rand(ffn, width),
                                moe + f"experts.{e}.w3.weight": rand(ffn, width),
                                moe + f"experts.{e}.w2.weight": rand(width, ffn)})
        else:
            tensors.update({p + "mlp.gate_proj.weight": rand(ffn, width), p + "mlp.up_proj.weight": rand(ffn, width),
                            p + "mlp.down_proj.weight": rand(width, ffn)})
    directory.mkdir(parents=True)
    save_file(tensors, directory / "model.safetensors")
    config = {"model_type": "mixtral" if experts else "llama", "hidden_size": width, "intermediate_size": ffn,
              "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": layers, "vocab_size": 256,
              "max_position_embeddings": 64, "tie_word_embeddings": False}
    if experts:
        config.update(num_local_experts=experts, num_experts_per_tok=2)
    (directory / "config.json").write_text(json.dumps(config))
    return len(tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=420)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128, help="each expert's MLP size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default="/dev/shm", help="where the outputs go (and are removed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    best: dict[str, dict] = {}
    try:
        sources = {"moe": work / "moe", "dense": work / "dense"}
        counts = {"moe": make_source(sources["moe"], args.experts, args.layers, args.width, args.ffn),
                  "dense": make_source(sources["dense"], 0, args.layers, args.width, args.experts * args.ffn)}
        for _ in range(args.repeats):
            for name, src in sources.items():
                r = run(src, 2 * args.width, Path(args.out_dir) / f"bench-moe-{name}", arch="")
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: r["bytes"] / r["seconds"] for name, r in best.items()}
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                      "runs": {name: {"tensors": counts[name], "output_bytes": best[name]["bytes"],
                                      "seconds": round(best[name]["seconds"], 3), "GB_s": round(rate[name] / 1e9, 3)}
                               for name in sources},
                      "ratio_moe_to_dense": round(rate["moe"] / rate["dense"], 3),
                      # what the extra tensors cost, each: the time left after the dense rate paid for the bytes
                      "us_per_extra_tensor": round((best["moe"]["seconds"] - best["moe"]["bytes"] / rate["dense"])
                                                   / (counts["moe"] - counts["dense"]) * 1e6, 1)}, indent=2))


if __name__ == "__main__":
    main()
