"""A 28 M-parameter BERT-style text encoder with seeded random weights, exported by PyTorch, to
time `compress` on a transformer of the size issue 9 names (20-30 M parameters).

No pretrained transformer of that size may be used here (all-MiniLM-L6-v2 is kept aside for
independent checks), so this one is built with a shape unlike it: 4 post-norm layers of width
512 (8 heads, feed-forward 2048, exact GELU), BERT's 30,522-token vocabulary and 512
positions, the sentence embedding the attention-mask-weighted mean of the last layer's tokens.
Inputs `input_ids` and `attention_mask` (int64, dynamic batch and length) as paraphrase-
MiniLM-L3-v2's, so the committed token arrays (models/data/minilm_*.npz) feed it; outputs
`sentence_embedding` (batch, 512) and `token_embeddings` (batch, length, 512). Weights: PyTorch's
default initialization under `torch.manual_seed(seed)`, embeddings N(0, 0.02²) as BERT's. Its
outputs mean nothing; its graph, sizes and timing are a real exporter's.

    pip install torch==2.13.0 && python models/text_encoder.py --out /tmp/text_encoder.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import torch
from torch import nn

VOCAB, POSITIONS, WIDTH, HEADS, FEED_FORWARD, LAYERS = 30522, 512, 512, 8, 2048, 4


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.up, self.down = nn.Linear(WIDTH, FEED_FORWARD), nn.Linear(FEED_FORWARD, WIDTH)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, HEADS, WIDTH // HEADS).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5 + bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, WIDTH)
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(POSITIONS, WIDTH)
        for table in (self.tokens, self.positions):
            nn.init.normal_(table.weight, std=0.02)
        self.norm = nn.LayerNorm(WIDTH)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        at = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(at)[None])
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return pooled, x


def build(out: Path, seed: int) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = TextEncoder().eval()
    ids = torch.ones(2, 16, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, torch.ones_like(ids)), str(out), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding", "token_embeddings"],
            dynamic_axes={name: {0: "batch", 1: "length"} for name in
                          ("input_ids", "attention_mask", "token_embeddings")}
            | {"sentence_embedding": {0: "batch"}})
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    proto = build(args.out, args.seed)
    params = sum(onnx.numpy_helper.to_array(t).size for t in proto.graph.initializer)
    print(f"{args.out}: {params:,} parameters, {args.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
