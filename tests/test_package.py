"""The installed package: one top-level name, a lazy Python API, no import circles, small modules,
and outputs byte-identical to those recorded before the move to one package."""

from __future__ import annotations

import ast
import gzip
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REAL_DATA, REAL_NAMES, REPO


def _package_dirs() -> dict[str, Path]:
    """Installed package name -> its folder in the repo, from pyproject's package-dir."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in tool["package-dir"].items()}


def _modules() -> dict[str, Path]:
    modules = {}
    for prefix, base in _package_dirs().items():
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            modules[".".join([prefix, *parts])] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every sftpack module `path` imports, at the top or inside a function (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sftpack"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("sftpack"))
    return {name for name in found if name in modules}


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert len(graph) > 60  # the walk saw the whole package

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return seen

    circles = sorted(name for name in graph if name in reaches(name))
    assert circles == [], f"modules on an import circle: {circles}"


def _package(module: str) -> str:
    """The subpackage a module belongs to (`sftpack.packing.stage` -> `sftpack.packing`); a top-level
    module (`sftpack.api`, `sftpack.records`) is its own."""
    return ".".join(module.split(".")[:2])


def _package_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(_package(name), set()).update(_package(m) for m in _imports(path, modules))
    return {package: imported - {package} for package, imported in graph.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def test_no_package_depends_on_itself():
    """Between subpackages too, counting every import (function-level ones included), nothing
    imports its way back: `checks -> io -> checks` is a circle even when no module is on one."""
    graph = _package_graph()
    assert {"sftpack.checks", "sftpack.io", "sftpack.packing", "sftpack.execution", "sftpack.validation"} <= set(graph)
    circles = {package: sorted(p for p in graph[package] if package in _reaches(graph, p)) for package in graph}
    assert {package: through for package, through in circles.items() if through} == {}


def test_the_cycle_test_finds_a_circle_between_packages():
    graph = _package_graph() | {"sftpack.io": _package_graph()["sftpack.io"] | {"sftpack.checks"}}
    assert "sftpack.checks" in _reaches(graph, "sftpack.io") and "sftpack.io" in _reaches(graph, "sftpack.checks")


def test_the_executors_import_no_stage():
    """datatrove's split: executors run steps and know nothing of any; stages import them."""
    allowed = {"sftpack.execution", "sftpack.errors"}
    graph = _package_graph()
    assert graph["sftpack.execution"] <= allowed, graph["sftpack.execution"] - allowed
    assert not _reaches(graph, "sftpack.execution") - allowed


def test_no_module_over_400_lines_no_function_over_60():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 400:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []


def test_import_sftpack_is_lazy_and_the_stages_are_callable():
    code = ("import sys, sftpack\n"
            "assert callable(sftpack.pack) and callable(sftpack.validate) and callable(sftpack.train)\n"
            "assert callable(sftpack.report) and callable(sftpack.plan) and sftpack.PackedFolder.dataset\n"
            "heavy = sorted(m for m in ('torch', 'pyarrow', 'transformers', 'datasets', 'numpy') if m in sys.modules)\n"
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_no_subpackage_shadows_an_api_function():
    """Importing a submodule binds its package on `sftpack`: no subpackage may share an API name."""
    import importlib
    import pkgutil

    import sftpack

    for module in pkgutil.walk_packages(sftpack.__path__, "sftpack."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    names = ("validate", "pack", "mix", "report", "plan", "train", "export")
    assert sorted(n for n in names if not callable(getattr(sftpack, n))) == []


def test_python_m_sftpack_is_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "sftpack", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "pack" in proc.stdout and "validate" in proc.stdout


def test_the_wheel_holds_one_top_level_package(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools writes build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "pipeline", "stages", "schemas"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("sftpack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"sftpack"}
    for expected in ("sftpack/__init__.py", "sftpack/__main__.py", "sftpack/py.typed", "sftpack/cli/__init__.py",
                     "sftpack/cli/pack.py", "sftpack/schemas/messages.schema.json",
                     "sftpack/schemas/run_config.schema.json", "sftpack/packing/stage.py"):
        assert expected in names, expected


# ---------------------------------------------------------------- outputs unchanged by the move

GOLDEN = json.loads((REPO / "tests" / "data" / "pack_golden.json").read_text())
OPTIONS = {"default": {}, "last_turn_512": {"max_length": 512, "train_on": "last"}}


def _rows_digest(shard: Path) -> str:
    """sha256 of a shard's rows as values, column by column (sorted names), read with pyarrow alone:
    the content the golden file fixes, not Arrow's file bytes, which a pyarrow upgrade may change."""
    import hashlib

    import pyarrow as pa

    with pa.OSFile(str(shard), "rb") as source:
        table = pa.ipc.open_stream(source).read_all()
    digest = hashlib.sha256()
    for name in sorted(table.column_names):
        digest.update(json.dumps([name, table.column(name).to_pylist()], separators=(",", ":")).encode())
    return digest.hexdigest()


def _demo_data(folder: Path) -> Path:
    """`make demo-data` into `folder`/data/demo; returns train.jsonl."""
    subprocess.run([sys.executable, str(REPO / "data" / "generate_demo.py"), "--out-dir", str(folder / "data" / "demo")],
                   check=True, capture_output=True)
    return folder / "data" / "demo" / "train.jsonl"


@pytest.fixture(scope="module")
def golden_inputs(real_data, tmp_path_factory) -> dict[str, Path]:
    inputs = {name: real_data / f"{name}.jsonl" for name in REAL_NAMES}
    return inputs | {"demo_train": _demo_data(tmp_path_factory.mktemp("golden"))}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_masks_shards_and_fingerprints_are_those_recorded_before_the_move(case, golden_inputs, model_dir, tmp_path):
    import sftpack

    name, options = case.split("/")
    folder = sftpack.pack([golden_inputs[name]], tmp_path, tokenizer=str(model_dir), **OPTIONS[options])
    expected = GOLDEN[case]
    assert folder.path.name == expected["fingerprint"]
    assert {s["file"]: _rows_digest(folder.path / s["file"]) for s in folder.manifest["shards"]} == expected["rows"]
    assert {k: folder.totals[k] for k in expected["totals"]} == expected["totals"]


def test_real_data_in_the_repo_matches_its_notice():
    notice = (REAL_DATA / "NOTICE").read_text()
    for name in REAL_NAMES:
        lines = gzip.decompress((REAL_DATA / f"{name}.jsonl.gz").read_bytes()).splitlines()
        assert f"{name}.jsonl.gz\n  {len(lines)} " in notice
    assert notice.count("Apache License 2.0") >= 3


def test_readme_python_example_packs_and_trains_with_trl(tiny_model_dir, tmp_path):
    """The README's "From Python" block, as it is, in a folder laid out as after `make model demo-data`,
    followed by two lines that print its trainer's state: one step trained, with a finite loss,
    saved as checkpoint-1 with weights that moved. Its model folder holds the tiny Llama (SmolLM2's
    tokenizer and template): the 135M model trains the same code in `make demo`, and saving its
    checkpoint with AdamW's state took half a minute here."""
    import math

    from safetensors import safe_open

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code += ("import json\nprint('STATE', json.dumps({'global_step': trainer.state.global_step,"
             " 'log_history': trainer.state.log_history}))\n")
    _demo_data(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m-instruct").symlink_to(tiny_model_dir, target_is_directory=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained tokens" in proc.stdout
    state = json.loads(proc.stdout.split("\nSTATE ", 1)[1])
    assert state["global_step"] == 1
    [summary] = [log for log in state["log_history"] if "train_loss" in log]
    assert math.isfinite(summary["train_loss"]) and summary["train_loss"] > 0
    checkpoint = tmp_path / "out" / "runs" / "python" / "checkpoint-1"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 1
    with safe_open(checkpoint / "model.safetensors", "pt") as trained, \
            safe_open(tiny_model_dir / "model.safetensors", "pt") as initial:
        name = "model.layers.0.mlp.down_proj.weight"
        assert not trained.get_tensor(name).float().equal(initial.get_tensor(name).float())  # the step moved it


DATA_STAGES_WITH_A_CONFIG = """
import sys
from pathlib import Path

import yaml

import sftpack

tmp, data, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = tmp / "run.yaml"
config.write_text(yaml.safe_dump({"model": {"name_or_path": model}, "data": {"max_length": 256},
                                  "train": {"learning_rate": 1e-3}, "peft": {"r": 8}}))
sftpack.validate([data], tmp / "validated", config=str(config))
sftpack.pack([data], tmp / "packed", config=str(config))
print(sorted(name for name in ("trl", "torch", "peft", "transformers", "pandas") if name in sys.modules))
sftpack.report([data], tmp / "report.html", config=str(config))
print(sorted(name for name in ("trl", "torch", "peft") if name in sys.modules))
"""


def test_data_stages_given_a_config_import_neither_trl_nor_torch(real_data, model_dir, tmp_path):
    """validate, pack and report read the config's model and data sections; checking `train` against
    TRL's SFTConfig (and `peft` against PEFT) imports TRL and torch, seconds a process, so train alone
    checks those (test_foundation: their errors). validate and pack, on a tokenizer folder that
    allows it (pipeline/templates/rust_tokenizer.py), import neither transformers nor pandas."""
    data = real_data / "fastchat_dummy_conversation.jsonl"
    done = subprocess.run([sys.executable, "-c", DATA_STAGES_WITH_A_CONFIG, str(tmp_path), str(data), str(model_dir)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
