"""Sample text from a cvkd LM checkpoint.

    cvkd generate runs/lm/teacher/best.pt --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top-k 20
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sample text from a cvkd char-level LM checkpoint (last.pt or best.pt).")
    ap.add_argument("checkpoint", help="LM checkpoint written by cvkd train-lm or cvkd distill-lm")
    ap.add_argument("--prompt", default="\n", help="text to continue (every character must be in the vocabulary)")
    ap.add_argument("--tokens", type=int, default=500, help="number of characters to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely characters (0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = ap.parse_args(argv)

    import torch

    from cvkd.checkpoint import CheckpointError
    from cvkd.lm.data import DataError
    from cvkd.lm.train import load_lm

    try:
        if args.tokens < 0:
            raise DataError(f"--tokens must be >= 0, got {args.tokens}")
        model, tok, ck = load_lm(args.checkpoint, args.device)
        prompt = args.prompt or tok.chars[0]
        idx = tok.encode(prompt)[None].to(args.device)  # (1, T0)
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = model.generate(idx, args.tokens, args.temperature, args.top_k, generator=gen)  # (1, T0 + tokens)
    print(tok.decode(out[0].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
