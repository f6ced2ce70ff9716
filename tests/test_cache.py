"""The build cache is bounded: least recently used entries are evicted past $VNCOMPILE_CACHE_MAX_SIZE, never one
in use; a hit marks an entry used; one graph under two names is stored once; `vncompile cache info|clear`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.core.io import file_lock
from vncompile.pipeline.cache import BuildCache, reading

HOUR = 3600.0


def fake_entry(root: Path, kind: str, key: str, nbytes: int, used_ago_s: float) -> Path:
    entry = root / kind / key
    entry.mkdir(parents=True)
    (entry / "model.onnx").write_bytes(b"\0" * nbytes)
    when = time.time() - used_ago_s
    os.utime(entry, (when, when))
    return entry


def test_trim_evicts_the_least_recently_used_until_the_cache_fits(tmp_path):
    cache = BuildCache(tmp_path, max_bytes=2500, in_use_s=HOUR)
    oldest = fake_entry(tmp_path, "onnx", "a" * 64, 1000, used_ago_s=5 * HOUR)
    older = fake_entry(tmp_path, "builds", "b" * 64, 1000, used_ago_s=4 * HOUR)
    old = fake_entry(tmp_path, "builds", "c" * 64, 1000, used_ago_s=3 * HOUR)
    recent = fake_entry(tmp_path, "builds", "d" * 64, 1000, used_ago_s=60)
    assert [e.path for e in cache.entries()] == [oldest, older, old, recent]
    evicted = cache.trim()
    assert [e.path for e in evicted] == [oldest, older]  # 4000 -> 2000 bytes: fits
    assert not oldest.exists() and not older.exists() and old.exists() and recent.exists()
    assert not list((tmp_path / "builds").glob(".*")) and not list((tmp_path / "onnx").glob(".*"))


def test_trim_spares_entries_in_use_and_the_one_just_stored(tmp_path):
    cache = BuildCache(tmp_path, max_bytes=100, in_use_s=HOUR)
    locked = fake_entry(tmp_path, "onnx", "a" * 64, 1000, used_ago_s=5 * HOUR)
    kept = fake_entry(tmp_path, "builds", "b" * 64, 1000, used_ago_s=4 * HOUR)
    used_lately = fake_entry(tmp_path, "builds", "c" * 64, 1000, used_ago_s=600)
    evictable = fake_entry(tmp_path, "builds", "d" * 64, 1000, used_ago_s=2 * HOUR)
    with file_lock(tmp_path / "locks" / f"{'a' * 64}.lock"):  # another build holds it
        evicted = cache.trim(keep=kept)
    assert [e.path for e in evicted] == [evictable]  # over the bound still, but nothing else may go
    assert locked.exists() and kept.exists() and used_lately.exists()
    assert BuildCache(tmp_path, max_bytes=None).trim() == []  # unbounded: never evicts


def test_eviction_spares_an_entry_being_read_or_used_since_it_was_listed(tmp_path):
    cache = BuildCache(tmp_path, max_bytes=100, in_use_s=HOUR)
    read = fake_entry(tmp_path, "builds", "a" * 64, 1000, used_ago_s=5 * HOUR)
    used_since = fake_entry(tmp_path, "builds", "b" * 64, 1000, used_ago_s=4 * HOUR)
    listed = {e.path: e for e in cache.entries()}
    os.utime(used_since)  # another process hit it after this one listed the entries
    assert not cache.evict(listed[used_since], unused_for_s=HOUR)
    with reading(read):  # a profile measuring it, ci copying it, a build reading its ONNX entry
        assert cache.trim() == []
    assert read.exists() and used_since.exists()
    assert [e.path for e in cache.trim()] == [read]  # read no more: evicted


def test_what_a_killed_write_left_is_removed_by_trim_when_stale_and_by_clear(tmp_path):
    cache = BuildCache(tmp_path, max_bytes=10**9, in_use_s=HOUR)
    stale_write = fake_entry(tmp_path, "builds", f".{'a' * 64}.tmp-123-0badf00d", 1000, used_ago_s=2 * HOUR)
    half_evicted = fake_entry(tmp_path, "onnx", f".{'b' * 64}.evicted-0badf00d", 1000, used_ago_s=5 * HOUR)
    in_progress = fake_entry(tmp_path, "builds", f".{'c' * 64}.tmp-456-0badf00d", 1000, used_ago_s=1)
    entry = fake_entry(tmp_path, "builds", "d" * 64, 1000, used_ago_s=5 * HOUR)
    assert cache.trim() == [] and entry.exists()  # under the bound: nothing evicted
    assert not stale_write.exists() and not half_evicted.exists() and in_progress.exists()
    assert cache.leftovers() == [in_progress]
    assert [e.path for e in cache.clear()] == [entry]
    assert cache.leftovers() == [] and not list((tmp_path / "builds").iterdir())


def narrow_build(run_cli, out: Path, *extra: str):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--size", "64", "--target", "analytic",
                     "-o", out, *extra)
    assert result.code == 0, result.err


def test_a_hit_marks_the_entry_used_and_one_graph_is_stored_once(tmp_path, run_cli, isolated_cache):
    narrow_build(run_cli, tmp_path / "a")
    cache = BuildCache(isolated_cache)
    entries = cache.entries()
    assert {e.kind for e in entries} == {"reference", "onnx", "builds"}
    onnx_entry = next(e.path for e in entries if e.kind == "onnx")
    model, simplified = (onnx_entry / n for n in ("model.onnx", "simplified.onnx"))
    assert model.stat().st_ino == simplified.stat().st_ino  # the fp32 target-ready graph is the simplified one
    for entry in entries:
        os.utime(entry.path, (0, 0))
    narrow_build(run_cli, tmp_path / "b")  # served from the cache: the build's entry, without its ONNX's
    used = {e.kind: time.time() - e.last_used < HOUR for e in cache.entries()}
    assert used == {"builds": True, "onnx": False, "reference": False}


def test_a_store_past_the_bound_evicts_what_was_used_longest_ago(tmp_path, run_cli, isolated_cache, monkeypatch):
    narrow_build(run_cli, tmp_path / "a")
    first = BuildCache(isolated_cache).entries()
    for entry in first:
        os.utime(entry.path, (time.time() - 2 * HOUR,) * 2)
    monkeypatch.setenv("VNCOMPILE_CACHE_MAX_SIZE", "1KB")
    narrow_build(run_cli, tmp_path / "b", "--size", "96")  # a new build: its three entries stay, being in use
    now = BuildCache(isolated_cache).entries()
    assert len(now) == 3 and not {e.path for e in now} & {e.path for e in first}
    assert (tmp_path / "a" / "manifest.json").exists()  # a published build is the user's, not the cache's


def test_cache_info_and_clear(tmp_path, run_cli, isolated_cache, monkeypatch):
    narrow_build(run_cli, tmp_path / "a")
    info = run_cli("cache", "info", "--json")
    assert info.code == 0, info.err
    document = json.loads(info.out)
    assert document["root"] == str(isolated_cache) and document["max_bytes"] == 20 * 1024**3
    assert document["kinds"]["onnx"]["entries"] == 1 and document["kinds"]["builds"]["entries"] == 1
    assert document["kinds"]["reference"]["entries"] == 1
    assert document["bytes"] == sum(e.bytes for e in BuildCache(isolated_cache).entries()) > 0
    with BuildCache(isolated_cache).in_use():  # another vncompile process is building
        busy = run_cli("cache", "clear")
    assert busy.code == 1 and one_line_error(busy) == (
        f"error: the build cache {isolated_cache} is in use by another vncompile process (a build, profile or ci "
        "run); clear it when that ends")
    assert len(BuildCache(isolated_cache).entries()) == 3
    cleared = run_cli("cache", "clear")
    assert cleared.code == 0 and "removed 3 entries" in cleared.err
    assert BuildCache(isolated_cache).entries() == []
    narrow_build(run_cli, tmp_path / "b")  # rebuilt, as on a fresh machine

    monkeypatch.setenv("VNCOMPILE_CACHE_MAX_SIZE", "none")
    assert json.loads(run_cli("cache", "info", "--json").out)["max_bytes"] is None
    monkeypatch.setenv("VNCOMPILE_CACHE_MAX_SIZE", "lots")
    bad = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "analytic", "-o", tmp_path / "c")
    assert bad.code == 2 and one_line_error(bad) == (
        "error: $VNCOMPILE_CACHE_MAX_SIZE must be a memory size such as 20GB or 900MB, or 'none' for no bound; "
        "got 'lots'")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("text,expected", [("1GB", 1024**3), ("900MB", 900 * 1024**2), ("NONE", None), ("0.5", 1)])
def test_the_bound_reads_memory_sizes(monkeypatch, tmp_path, text, expected):
    monkeypatch.setenv("VNCOMPILE_CACHE_MAX_SIZE", text)
    assert BuildCache(tmp_path).max_bytes == expected
