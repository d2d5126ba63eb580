"""Structure rules a contributor can rely on: short functions, no sys.path edits in the package, one run shell
shared by the detector and LM trainers, tools/ as thin scripts over cvkd.commands."""
import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_long_functions_in_the_package():
    long = [f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in sorted((ROOT / "cvkd").rglob("*.py")) for f in _functions(p)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_sys_path_edits_in_installed_code_or_tools():
    offenders = [str(p.relative_to(ROOT)) for d in ("cvkd", "tools") for p in (ROOT / d).rglob("*.py")
                 if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]
    assert not offenders, offenders


def test_trainers_share_the_run_shell():
    """Run folder, config save, CSV, checkpoint writes, replica check: only cvkd.runs.Run does them."""
    shell_only = {"make_run_dir", "save_checkpoint", "write_rows", "setup_logging", "save_config", "check_replicas",
                  "read_rows"}
    for rel in ("cvkd/engine/trainer.py", "cvkd/lm/train.py"):
        names = {n.id for n in ast.walk(ast.parse((ROOT / rel).read_text())) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(ast.parse((ROOT / rel).read_text())) if isinstance(n, ast.Attribute)}
        assert not names & shell_only, (rel, names & shell_only)
        assert "Run" in names, rel


def test_tools_are_thin_scripts_over_cvkd_commands():
    for path in (ROOT / "tools").glob("*.py"):
        if path.stem in ("demo", "make_demo_set"):  # repository scripts: the README demo and its data set
            continue
        text = path.read_text()
        assert "from cvkd.commands." in text and len(text.splitlines()) <= 15, path.name


def test_every_package_folder_has_an_init():
    """setuptools' find_packages skips folders without __init__.py: a non-editable install would miss them."""
    missing = [str(d.relative_to(ROOT)) for d in (ROOT / "cvkd").rglob("*") if d.is_dir() and d.name != "__pycache__"
               and any(d.glob("*.py")) and not (d / "__init__.py").is_file()]
    assert not missing, missing


def test_tracked_files_leave_room_for_the_gpu_pack():
    """The device tool sends the tracked files plus the carried .gpu/ pack (~10.3 MiB, benchmarks/gpu_pack.py) and
    refuses more than 64 MiB in all: a checkpoint or data file committed beyond this budget would lock GPU sessions
    out (keep older checkpoints in git history, as checkpoints/README.md does)."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    sizes = [(ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file()]
    assert sum(sizes) / 2**20 < 53, f"tracked files {sum(sizes) / 2**20:.1f} MiB: over the 53 MiB budget"
