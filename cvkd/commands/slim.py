"""Shrink a detector checkpoint for shipping: weights only (no optimizer/EMA/resume state), fp16 by default.

    cvkd slim runs/bench_cctv/teacher_rerun_linear_s0/final.pt teacher_fp16.pt.xz
    cvkd slim runs/detect/train/weights/last.pt teacher_fp16.pt.xz    # an ultralytics checkpoint -> cvkd format

A destination ending in ``.xz`` is written xz-compressed (cvkd loads it directly).

Loading casts the weights back to fp32 (``cvkd.models.load_detector``).
"""
import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from cvkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="cvkd detector checkpoint (final.pt / best.pt / last.pt), or an ultralytics .pt (its "
                    "EMA weights, loaded without running code from it)")
    ap.add_argument("dst", help="output path")
    ap.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    ap.add_argument("--ema", action="store_true", help="from a last.pt, take the EMA weights instead of the raw ones")
    args = ap.parse_args(argv)
    try:
        ck = load_checkpoint(args.src, kind="detector")
    except CheckpointError as e:
        ck = _from_ultralytics(args.src) if "no cvkd header" in str(e) else None
        if ck is None:
            print(f"error: {e}", file=sys.stderr)
            return 2
    state = ck["ema"] if args.ema and ck.get("ema") is not None else ck["model"]
    if not args.fp32:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = dict(ck["meta"], source=str(args.src), dtype="fp32" if args.fp32 else "fp16")
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.dst, "detector", state, meta)
    print(f"{args.dst}: {Path(args.dst).stat().st_size / 1e6:.1f} MB")
    return 0


def _from_ultralytics(path: str) -> dict | None:
    """An ultralytics checkpoint as a cvkd one (``model`` + ``meta``), or None (the error is printed)."""
    from cvkd import __version__
    from cvkd.errors import ModelError
    from cvkd.models.yolo import YoloAdapter

    try:
        m = YoloAdapter.from_ultralytics_checkpoint(path)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    meta = {"family": m.family, "arch": m.arch_spec(), "class_names": m.class_names, "imgsz": m.imgsz,
            "cvkd_version": __version__}
    return {"model": m.model.state_dict(), "meta": meta}


if __name__ == "__main__":
    sys.exit(main())
