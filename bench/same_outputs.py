"""validate, pack and mix on fixed inputs (the real datasets, a glob, .gz, a dirty file, a 6x file cut
into ranges, the demo mix, four recipes over order-dependent near duplicates); prints the sha256 of every output file as JSON (manifests without their
volatile keys: times, engine, where the work ran). Run it with two trees and diff the JSON:

    .venv/bin/python bench/same_outputs.py /tmp/same > new.json
    PYTHONPATH=/tmp/old-tree .venv/bin/python bench/same_outputs.py /tmp/same > old.json

(/tmp/old-tree holding an earlier commit's pipeline/ as sftpack/, stages/ as sftpack/cli, schemas/ as
sftpack/schemas.) The first argument is a scratch folder, emptied first; give both runs the same one
(mixtures name their benchmark files by path)."""
import gzip, hashlib, json, shutil, subprocess, sys, os
from pathlib import Path

import sftpack

REPO = Path(__file__).resolve().parent.parent
MODEL = str(REPO / "models" / "smollm2-135m-instruct")
work = Path(sys.argv[1]); shutil.rmtree(work, ignore_errors=True); work.mkdir(parents=True)
data = work / "data"; data.mkdir()
for name in ("alpaca_en_demo", "fastchat_dummy_conversation", "glaive_toolcall_en_demo"):
    (data / f"{name}.jsonl").write_bytes(gzip.decompress((REPO / "tests/data/real" / f"{name}.jsonl.gz").read_bytes()))
shutil.copy(REPO / "tests/data/real/glaive_toolcall_en_demo.jsonl.gz", data / "glaive_gz.jsonl.gz")
subprocess.run([sys.executable, str(REPO / "data/generate_demo.py"), "--out-dir", str(work / "demo")], check=True, capture_output=True)
alpaca = (data / "alpaca_en_demo.jsonl").read_bytes()
(data / "big.jsonl").write_bytes(alpaca * 6)  # multi-range
lines = alpaca.splitlines(keepends=True)
dirty = lines[:300] + [b"\n", b"{not json\n", b'{"messages": []}\n', b"   \n"] + lines[300:600] + [b'[1,2]\n'] + lines[:40]
(data / "dirty.jsonl").write_bytes(b"".join(dirty))
folder = data / "parts"; folder.mkdir()
(folder / "a.jsonl").write_bytes(b"".join(lines[:200])); (folder / "b.jsonl").write_bytes(b"".join(lines[200:500]))
VOLATILE = {"created_unix", "seconds", "engine", "num_proc", "threads", "ray", "path", "reused"}

def clean(v):
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v

def hashes(root):
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if p.name.endswith(".json"):
                out[rel] = hashlib.sha256(json.dumps(clean(json.loads(p.read_text())), sort_keys=True).encode()).hexdigest()
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out

result = {}
inputs = {"alpaca": data / "alpaca_en_demo.jsonl", "fastchat": data / "fastchat_dummy_conversation.jsonl",
          "glaive": data / "glaive_toolcall_en_demo.jsonl", "glaive_gz": data / "glaive_gz.jsonl.gz",
          "demo": work / "demo/train.jsonl", "big": data / "big.jsonl", "dirty": data / "dirty.jsonl", "parts": str(folder / "*.jsonl")}
for name, path in inputs.items():
    out = work / "val" / name
    sftpack.validate([path], out, allow_rejects=True)
    result[f"validate/{name}"] = hashes(out)
    out = work / "valtok" / name
    sftpack.validate([path], out, tokenizer=MODEL, allow_rejects=True)
    result[f"validate_tok/{name}"] = hashes(out)
for name, opts in {"default": {}, "last512": {"max_length": 512, "train_on": "last"}, "none": {"strategy": "none"},
                   "small_shards": {"shard_tokens": 20000}}.items():
    for iname in ("alpaca", "glaive", "demo", "big", "dirty", "parts", "glaive_gz"):
        out = work / "pack" / name / iname
        f = sftpack.pack([inputs[iname]], out, tokenizer=MODEL, allow_rejects=True, **opts)
        result[f"pack/{name}/{iname}"] = hashes(f.path)
recipe = (REPO / "configs/demo-mix.yaml").read_text().replace("data/demo/", str(work / "demo") + "/").replace(
    "tests/data/", str(REPO / "tests/data") + "/").replace("data/benchmarks", str(REPO / "data/benchmarks")).replace(
    "models/", str(REPO / "models") + "/")
(work / "mix.yaml").write_text(recipe)
m = sftpack.mix(work / "mix.yaml", work / "mix")
result["mix/demo"] = hashes(m["path"])
# order-dependent near duplicates, tool calls with reordered keys, benchmarks (tests/conftest.py)
sys.path.insert(0, str(REPO / "tests"))
from conftest import near_duplicate_sources  # noqa: E402
chains, bench = near_duplicate_sources(work / "chains")
base = {"sources": [{"name": p.stem, "path": str(p)} for p in sorted(data.glob("*_*.jsonl")) + chains],
        "eval": {"count": 5}, "decontaminate": {"benchmarks": [str(REPO / "data/benchmarks/tiny-bench.jsonl"), str(bench)]}}
for name, extra in {"near": {"dedup": {"near": {"threshold": 0.8}}, "tokenizer": MODEL, "filters": {"max_tokens": 400}},
                    "exact_report": {"decontaminate": base["decontaminate"] | {"mode": "report"}},
                    "near_prompt": {"dedup": {"exact": False, "near": {"threshold": 0.7, "on": "prompt"}}},
                    "no_dedup": {"dedup": {"exact": False}}}.items():
    m = sftpack.mix(base | extra, work / "mix" / name, allow_rejects=True)
    result[f"mix/{name}"] = hashes(m["path"])
print(json.dumps(result, indent=1, sort_keys=True))
