"""pack --ray: the same folder (fingerprint, shard sha256, manifest totals) as the local run, on a
real two-node Ray cluster started here, on `--ray local`, and with a worker SIGKILLed mid-run.

Every Ray process and every command that talks to one runs inside a network namespace of this
module's own with only `lo` up, so no cluster traffic can leave loopback (Ray otherwise binds the
host's interface address). Ray is started under `setsid`; teardown ends that session's processes
and anything left in the namespace by PID, then deletes the namespace. Needs root (`ip netns`)
and iproute2 (`make test` installs it when missing).

The byte-range splitting and the shared-folder check are tested without a cluster, first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from sftpack.execution.cluster import CHECK_FILE, Staging
from sftpack.io.ranges import range_lines
from sftpack.errors import SftpackError

SFTPACK = str(Path(sys.executable).parent / "sftpack")
RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
HEAD = "127.0.0.1:6379"  # the namespace's own loopback: no other cluster can be there

# One worker runs every Ray test (pytest-xdist): two clusters at once would share 2 cores.
pytestmark = pytest.mark.xdist_group("ray")


# ---------------------------------------------------------------- without a cluster

def test_byte_ranges_give_every_line_once_with_its_number(tmp_path):
    """Cut anywhere (mid-line, on a newline, on a line start), the ranges give the lines enumerate gives."""
    data = b'{"a": 1}\n\n  \n{"b": 22}\r\n{"c": 333}\n\n{"d": 4444}'  # blanks, CRLF, no final newline
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    expected = list(enumerate(data.splitlines(keepends=True), start=1))  # blank ones too: validate counts them
    for cut in range(1, len(data) + 1):
        bounds = list(range(0, len(data), cut)) + [len(data)]
        found, before = [], 0
        for start, end in zip(bounds, bounds[1:]):
            found += list(range_lines(str(path), start, end, before + 1))
            before += data[start:end].count(b"\n")
        assert found == expected, cut


def test_a_node_that_cannot_see_the_output_folder_is_named(tmp_path):
    staging = tmp_path / "out" / ".incomplete-1-x" / ".staging"
    with pytest.raises(SftpackError, match=r"cannot see the output folder .*out.*missing.*same path"):
        Staging(str(staging), "token").check()
    staging.mkdir(parents=True)
    (staging / CHECK_FILE).write_text("another run's token")
    with pytest.raises(SftpackError, match="is another folder"):
        Staging(str(staging), "token").check()
    (staging / CHECK_FILE).write_text("token")
    Staging(str(staging), "token").check()


def test_a_workers_error_reaches_the_user_without_rays_traceback():
    from sftpack.execution.cluster import run_dataset

    class RemoteError(Exception):  # how Ray hands back a task's exception: its traceback in the text
        pass

    def rows():
        yield {"range": 0}
        raise RemoteError("ray::MapWorker(...) (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 3\n"
                          "sftpack.errors.SftpackError: Ray node 10.0.0.2 (b) cannot see the output folder /shared/out")

    found = []
    with pytest.raises(SftpackError) as err:
        for row in run_dataset(rows()):
            found.append(row)
    assert found == [{"range": 0}]
    assert str(err.value) == "Ray node 10.0.0.2 (b) cannot see the output folder /shared/out"


def test_ray_is_not_imported_without_the_flag(real_data, model_dir, tmp_path):
    code = ("import sys; from sftpack.packing.stage import PackConfig, run; "
            f"run([{str(real_data / 'fastchat_dummy_conversation.jsonl')!r}], {str(tmp_path)!r}, "
            f"PackConfig(tokenizer={str(model_dir)!r})); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- a namespace and a cluster of our own

class Namespace:
    """A network namespace with only `lo` up; processes started in it under setsid are ended by PID."""

    def __init__(self, name: str):
        self.name = name
        self.sessions: list[int] = []
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Start `args` in the namespace in a new session (setsid), remembered for teardown."""
        proc = subprocess.Popen(self.command(args), start_new_session=True, env=ENV, **kwargs)
        self.sessions.append(proc.pid)
        return proc

    def pids(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def close(self) -> None:
        for _ in range(20):
            ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
            ours = {int(pid) for pid, sid in (line.split() for line in ps if line.strip())
                    if int(sid) in self.sessions} | self.pids()
            ours.discard(os.getpid())
            if not ours:
                break
            for pid in ours:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _namespace(tag: str) -> Namespace:
    if os.geteuid() != 0:
        pytest.skip("ip netns needs root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.fail("iproute2's `ip` is missing: `apt-get install -y iproute2` (make test does it)")
    return Namespace(f"sftpack-{tag}-{os.getpid()}")


@pytest.fixture(scope="module")
def ray_tmp():
    # Short: Ray's socket paths under it must stay below the 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="sfr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(ray_tmp):
    """A head node and a second node, 1 CPU each, on the namespace's loopback."""
    ns = _namespace("cluster")
    try:
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        head = ns.start([RAY, "start", "--head", "--port", "6379", "--include-dashboard", "false",
                         "--temp-dir", str(ray_tmp / "c"), *common], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = head.communicate(timeout=120)[0]
        assert head.returncode == 0, out.decode(errors="replace")[-3000:]
        node = ns.start([RAY, "start", "--address", HEAD, *common], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = node.communicate(timeout=120)[0]
        assert node.returncode == 0, out.decode(errors="replace")[-3000:]
        wait = ("from sftpack.execution.cluster import wait_for_cluster; "
                f"wait_for_cluster({HEAD!r}, 2, timeout_s=90)")
        subprocess.run(ns.command([sys.executable, "-c", wait]), env=ENV, check=True, timeout=120)
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="module")
def inputs(real_data):
    return sorted(real_data.glob("*.jsonl"))


@pytest.fixture(scope="module")
def local_run(inputs, model_dir, tmp_path_factory):
    """The reference: the same inputs packed here, without Ray."""
    out = tmp_path_factory.mktemp("local")
    return _pack(None, inputs, model_dir, out, None)


def _pack_command(inputs, model_dir, out, ray):
    cmd = [SFTPACK, "pack", *map(str, inputs), "--tokenizer", str(model_dir), "--max-length", "1024",
           "--out-dir", str(out)]
    return cmd + (["--ray", ray] if ray else [])


def _pack(ns: Namespace | None, inputs, model_dir, out, ray) -> Path:
    cmd = _pack_command(inputs, model_dir, out, ray)
    done = subprocess.run(ns.command(cmd) if ns else cmd, capture_output=True, text=True, env=ENV, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


def _assert_same(folder: Path, reference: Path) -> dict:
    assert folder.name == reference.name  # the fingerprint
    got, want = (json.loads((f / "manifest.json").read_text()) for f in (folder, reference))
    assert got["shards"] == want["shards"]  # sha256, rows, tokens, trained tokens of every shard
    assert got["totals"] == want["totals"]
    assert got["first_drops"] == want["first_drops"]
    for name in ["stats.parquet", "state.json", "dataset_info.json", *(s["file"] for s in want["shards"])]:
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    return got


def test_two_node_cluster_packs_the_same_folder_and_reuse_works_across(cluster, inputs, model_dir, local_run,
                                                                       tmp_path):
    folder = _pack(cluster, inputs, model_dir, tmp_path, HEAD)
    manifest = _assert_same(folder, local_run)
    assert manifest["engine"]["name"] == "ray" and manifest["engine"]["nodes"] == 2
    assert manifest["engine"]["cpus"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging left
    again = subprocess.run(_pack_command(inputs, model_dir, tmp_path, None), capture_output=True, text=True, env=ENV)
    assert again.returncode == 0 and again.stdout.startswith("reused"), again.stdout + again.stderr


def test_ray_local_packs_the_same_folder(inputs, model_dir, local_run, tmp_path, ray_tmp):
    ns = _namespace("local")
    try:
        env_cmd = ["env", f"RAY_TMPDIR={ray_tmp / 'l'}"]
        (ray_tmp / "l").mkdir()
        cmd = env_cmd + _pack_command(inputs, model_dir, tmp_path, "local")
        proc = ns.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-4000:]
        manifest = _assert_same(Path(out.strip().splitlines()[-1]), local_run)
        assert manifest["engine"]["address"] == "local"
    finally:
        ns.close()


def _wait_for(predicate, timeout: float, what: str, details=lambda: ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; {details()}")


def _encoder_pids(ns: Namespace) -> list[int]:
    """Ray Data's encode actors in our namespace (process title `ray::MapWorker(MapBatches(EncodeRanges))...`)."""
    pids = []
    for pid in ns.pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "MapBatches(EncodeRanges)" in title:
            pids.append(pid)
    return pids


def test_killed_driver_leaves_nothing_finished_and_a_killed_worker_changes_nothing(cluster, inputs, model_dir,
                                                                                    local_run, tmp_path):
    # 1. The driver SIGKILLed mid-run: only an .incomplete- folder is left behind.
    log = tmp_path.parent / f"{tmp_path.name}-driver.log"
    with open(log, "w") as sink:
        driver = cluster.start(_pack_command(inputs, model_dir, tmp_path, HEAD), stdout=sink, stderr=sink)
    _wait_for(lambda: list(tmp_path.glob(".incomplete-*/.staging/spill-*.arrow")), 240,
              "staged spill files", lambda: f"driver rc {driver.poll()}: {log.read_text()[-3000:]}")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert all(p.name.startswith(".incomplete-") for p in tmp_path.iterdir())

    # 2. The next run cleans that up; an encode actor SIGKILLed mid-run is retried by Ray.
    proc = cluster.start(_pack_command(inputs, model_dir, tmp_path, HEAD), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    pids = _wait_for(lambda: _encoder_pids(cluster), 240, "an encode actor", lambda: f"rc {proc.poll()}")
    _wait_for(lambda: list(tmp_path.glob(".incomplete-*/.staging/spill-*.arrow")), 240, "a first encoded range",
              lambda: f"rc {proc.poll()}")
    assert proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(pids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-4000:]
    _assert_same(Path(out.strip().splitlines()[-1]), local_run)
    assert [p.name for p in tmp_path.iterdir()] == [local_run.name]  # the killed run's leftovers are gone


def test_validate_on_the_cluster_writes_the_same_files(cluster, real_data, tmp_path):
    """Kept lines, rejects and manifests (but `seconds`) equal the local run's; blanks, bad JSON,
    duplicates across a range boundary and a last line without newline included."""
    lines = (real_data / "fastchat_dummy_conversation.jsonl").read_text().splitlines()
    mixed = tmp_path / "in" / "mixed.jsonl"
    mixed.parent.mkdir()
    mixed.write_text("\n".join(lines[:50] + ["", "not json", lines[3], '{"messages": []}', "  "] + lines[50:]
                               + [lines[10]]))
    inputs = [str(mixed), str(real_data / "alpaca_en_demo.jsonl")]
    local, remote = tmp_path / "local", tmp_path / "ray"
    for out, ray in ((local, None), (remote, HEAD)):
        cmd = [SFTPACK, "validate", *inputs, "--out-dir", str(out), "--allow-rejects"] + (["--ray", ray] if ray else [])
        done = subprocess.run(cluster.command(cmd) if ray else cmd, capture_output=True, text=True, env=ENV,
                              timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
    for path in local.iterdir():
        if path.name.endswith(".validate.json"):
            want, got = (json.loads(p.read_text()) for p in (path, remote / path.name))
            want.pop("seconds"), got.pop("seconds")
            assert got == want, path.name
        else:
            assert (remote / path.name).read_bytes() == path.read_bytes(), path.name
    assert json.loads((local / "mixed.validate.json").read_text())["warnings"]["duplicate"]["count"] == 2


def _kept_near_a_removed_one(folder: Path, near: list[dict]) -> int:
    """Training records at or above 0.8 exact Jaccard from an earlier record that was itself removed as a
    near duplicate: kept because that record is not a keeper (the greedy clusters depend on order)."""
    from sftpack.mixing.dedup import exact_jaccards, shingle_hashes
    from sftpack.mixing.text import shingles, turn_text, words

    def hashes(record):
        return shingle_hashes(shingles(words(turn_text(record)), 3))

    gone = [(e["source"], e["row"], hashes(e)) for e in near]
    order = {name: i for i, name in enumerate(json.loads((folder / "manifest.json").read_text())["sources"])}
    count = 0
    for line in (folder / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        earlier = [h for source, row, h in gone if (order[source], row) < (order[record["source"]], record["row"])]
        count += bool(earlier) and bool((exact_jaccards(hashes(record), earlier) >= 0.8).any())
    return count


@pytest.mark.parametrize("dedup", ["near", "exact"])
def test_mix_on_the_cluster_writes_the_same_files(cluster, real_data, model_dir, tmp_path, dedup):
    """`sftpack mix --ray`: n-gram lookups, band keys, their grouping and each component's
    deduplication on both nodes; the same folder, on sources whose near-duplicate choices depend on
    order, with token filters (near), and with exact dedup only and contamination reported (exact)."""
    import yaml

    from conftest import near_duplicate_sources

    repo = Path(__file__).resolve().parent.parent
    chains, bench = near_duplicate_sources(tmp_path / "chains")
    recipe = {"sources": [{"name": p.stem, "path": str(p)} for p in sorted(real_data.glob("*.jsonl")) + chains],
              "eval": {"count": 5},
              "decontaminate": {"benchmarks": [str(repo / "data" / "benchmarks" / "tiny-bench.jsonl"), str(bench)]}}
    if dedup == "near":
        recipe |= {"dedup": {"near": {"threshold": 0.8}}, "tokenizer": str(model_dir), "filters": {"max_tokens": 400}}
    else:
        recipe["decontaminate"]["mode"] = "report"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    folders = []
    for engine, ns in ((None, None), (HEAD, cluster)):
        cmd = [SFTPACK, "mix", "--recipe", str(path), "--out-dir", str(tmp_path / (engine and "ray" or "local"))]
        cmd += ["--ray", engine] if engine else []
        done = subprocess.run(ns.command(cmd) if ns else cmd, capture_output=True, text=True, env=ENV, timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
        folders.append(Path(done.stdout.strip().splitlines()[-1]))
    local, ray = folders
    assert local.name == ray.name
    got, want = (json.loads((f / "manifest.json").read_text()) for f in (ray, local))
    assert got["engine"]["name"] == "ray" and got["engine"]["nodes"] == 2
    assert got["outputs"] == want["outputs"] and got["sources"] == want["sources"]
    for name in want["outputs"]:
        assert (ray / name).read_bytes() == (local / name).read_bytes(), name
    entries = [json.loads(line) for line in (local / "removed.jsonl").read_text().splitlines()]
    removed = Counter(entry["reason"] for entry in entries)
    assert removed["exact_duplicate"] > 10
    # the same tool calls with their argument keys in reverse order: one conversation whose text (and so
    # class and band keys) differs; only the cluster's conversation-hash key brings the copy to its first
    trips = [e for e in entries if e["source"] == "second" and "Plan trip" in json.dumps(e.get("messages"))]
    assert len(trips) == 4 and all(e["reason"] == "exact_duplicate" and e["kept"].startswith("first:") for e in trips)
    if dedup == "near":
        near = [json.loads(line) for line in (local / "removed.jsonl").read_text().splitlines()
                if '"near_duplicate"' in line]
        assert len(near) > 150 and any(r["jaccard"] == 1.0 for r in near) and any(r["jaccard"] < 1 for r in near)
        assert _kept_near_a_removed_one(local, near) > 5  # decisions that depend on order: the components keep it
        assert removed["contaminated"] > 10 and removed["filter_max_tokens"] > 10 and want["totals"]["tokens"] > 0
    else:
        assert len((local / "contamination.jsonl").read_text().splitlines()) > 10 and not removed["contaminated"]
