"""Pack what a GPU session needs to train the CCTV teacher (and a long-schedule student) with ultralytics' own trainer,
for `benchmarks/gpu_teacher.sh` on the device machine, which reaches no network and gets only this repository
(64 MiB in all, the tracked files included) plus the paths a call carries.

    python benchmarks/gpu_pack.py                   # writes .gpu/ (git-ignored): data at 320 px, wheel, shim
    # device call: command "bash benchmarks/gpu_teacher.sh", carry [".gpu"], timeout_s 590

What goes into .gpu/:
- cctv_320/: the CCTV people set with every image shrunk to 320 px on its long side (cv2.INTER_LINEAR, what
  ultralytics' training loader does at imgsz 320, then WebP quality 90: mean absolute pixel change 2.2 of 255, 60 %
  of the bytes of JPEG quality 95 at about that error) and the label files as they are: ~10 MB instead of the 85 MB
  of 1920x1080 frames. Validation there is on these frames; the committed mAP of a teacher is always re-measured
  here, on the full-resolution val images, with the cvkd evaluator.
- whl/: the ultralytics wheel pinned in constraints.txt (pure Python; the machine already has torch, torchvision,
  numpy, opencv, matplotlib, pyyaml, psutil, requests).
- shim/polars: ultralytics' trainer imports polars only to read its own results.csv back into the checkpoint's
  metadata (inside a try); polars' wheels (~40 MB) do not fit the 64 MiB, so this stand-in raises there and the
  trainer stores an empty dict instead. Nothing else on the training path uses it.
"""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

POLARS_SHIM = '''"""Stand-in for polars on the GPU machine (benchmarks/gpu_pack.py): ultralytics' trainer calls
read_csv inside a try to copy results.csv into its checkpoint; raising makes it store an empty dict."""


def read_csv(*args, **kwargs):
    raise NotImplementedError("polars is not installed on this machine (benchmarks/gpu_pack.py)")
'''


def shrink(src: Path, dst: Path, imgsz: int) -> int:
    import cv2

    images = sorted(p for p in (src / "images").iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    for p in images:
        im = cv2.imread(str(p))
        if im is None:
            raise SystemExit(f"error: {p}: not a readable image")
        h, w = im.shape[:2]
        r = imgsz / max(h, w)
        if r < 1:
            im = cv2.resize(im, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(dst / "images" / (p.stem + ".webp")), im, [cv2.IMWRITE_WEBP_QUALITY, 90])
        label = src / "labels" / (p.stem + ".txt")
        if label.is_file():
            shutil.copyfile(label, dst / "labels" / label.name)
    return len(images)


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==(\S+)", line.strip())
        if m:
            return m.group(1)
    raise SystemExit(f"error: constraints.txt: no pin for {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cctv_people"),
                    help="YOLO-format CCTV folder with train/ and valid/ (default ../shared/datasets/cctv_people)")
    ap.add_argument("--out", default=str(ROOT / ".gpu"), help="pack folder (default .gpu, git-ignored)")
    ap.add_argument("--imgsz", type=int, default=320, help="long side of the packed images (default 320)")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    for split in ("train", "valid"):
        if not (data / split / "images").is_dir():
            print(f"error: {data / split / 'images'}: not found (--data is the CCTV YOLO folder)", file=sys.stderr)
            return 2
    if out.exists():
        shutil.rmtree(out)
    counts = {split: shrink(data / split, out / "cctv_320" / split, args.imgsz) for split in ("train", "valid")}
    version = pinned("ultralytics")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(out / "whl"), f"ultralytics=={version}"], check=True)
    (out / "shim" / "polars").mkdir(parents=True)
    (out / "shim" / "polars" / "__init__.py").write_text(POLARS_SHIM)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {counts['train']} train + {counts['valid']} val images at {args.imgsz} px, ultralytics {version} "
          f"wheel, polars shim; {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
