"""The ``cvkd`` command: ``cvkd <command> [options]``, one subcommand per tool, ``cvkd help [command]``."""
from __future__ import annotations

import importlib
import os
import sys

# command -> (module:function, one line for `cvkd help`); modules are imported only when their command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cvkd.commands.train:train_main", "train a detector without a teacher (-c config.yaml key=value ...)"),
    "distill": ("cvkd.commands.train:distill_main", "distil a student detector from a teacher (kd.teacher=...)"),
    "val": ("cvkd.commands.val:main", "COCO mAP of a checkpoint or a predictions json (pycocotools)"),
    "predict": ("cvkd.commands.predict:main", "detect on images, folders, videos, camera streams; annotated output"),
    "export": ("cvkd.commands.export:main", "export to ONNX FP32/INT8 and OpenVINO IR, with parity mAP"),
    "convert": ("cvkd.commands.convert:main", "YOLO txt / VOC / Penn-Fudan -> COCO json, and COCO -> YOLO txt"),
    "pseudo-label": ("cvkd.commands.pseudo_label:main", "label images or a video with a teacher (COCO json)"),
    "slim": ("cvkd.commands.slim:main", "weights-only fp16 copy of a checkpoint, for shipping"),
    "train-lm": ("cvkd.commands.train:train_lm_main", "train a char-level GPT (the text branch)"),
    "distill-lm": ("cvkd.commands.train:distill_lm_main", "distil a char-level GPT student"),
    "generate": ("cvkd.commands.generate:main", "sample text from an LM checkpoint"),
}
ALIASES = {"evaluate": "val", "eval": "val", "pseudo_label": "pseudo-label"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cvkd <command> [options]     (cvkd <command> --help lists every option)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "examples:",
              "  cvkd train -c configs/cctv_student.yaml train.epochs=30",
              "  cvkd distill -c configs/cctv_distill.yaml kd.teacher=teacher.pt",
              "  cvkd val --weights runs/kd/final.pt --data configs/cctv_distill.yaml",
              "  cvkd predict runs/kd/final.pt footage.mp4 --out runs/predict"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(f"cvkd {__version__}")
        return 0
    if argv[0] == "help":  # `cvkd help` or `cvkd help <command>`
        return main(argv[1:2] + ["--help"]) if len(argv) > 1 else main([])
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, [*COMMANDS, "help"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{argv[0]}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing downloads unless the user asks for it
    module, func = COMMANDS[name][0].split(":")
    sys.argv[0] = f"cvkd {name}"  # argparse names the program after argv[0]: usage lines read "cvkd val ..."
    return getattr(importlib.import_module(module), func)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
