"""Bad inputs through the real CLI: exit code, one ``lmdbio: error:`` line naming the path,
no traceback, and no DST or DST.partial left behind."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmdbio

from tests.helpers import (REPO, assert_one_line_error, build_simple_tree, jpeg_bytes, run_cli,
                      write)


def assert_no_output(dst: Path) -> None:
    assert not dst.exists(), dst
    assert not Path(f"{dst}.partial").exists()
    assert not Path(f"{dst}-lock").exists()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_simple_tree(tmp_path / "src", per_class=3, classes=("cat", "sea lion"))


# -- the source -----------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    src, dst = tmp_path / "nope", tmp_path / "out.lmdb"
    line = assert_one_line_error(run_cli("convert", src, dst), str(src), "does not exist")
    assert "data/train" in line  # says what to pass instead
    assert_no_output(dst)


def test_missing_source_default_destination(tmp_path: Path) -> None:
    src = tmp_path / "nope"
    assert_one_line_error(run_cli("convert", src), str(src), "does not exist")
    assert_no_output(tmp_path / "nope.lmdb")


def test_source_is_a_file(tmp_path: Path) -> None:
    src = write(tmp_path / "picture.jpg", jpeg_bytes(1))
    dst = tmp_path / "out.lmdb"
    assert_one_line_error(run_cli("convert", src, dst), str(src), "is not a directory")
    assert_no_output(dst)
    with pytest.raises(NotADirectoryError):  # as ImageFolder(src) raises, and still a
        lmdbio.convert(src, dst, progress=False)  # SourceError (a FileNotFoundError)


def test_a_class_folder_that_cannot_be_listed_is_an_error_not_missing_images(
        tree: Path, tmp_path: Path) -> None:
    """torchvision's walk passes over a folder it cannot list; a conversion must not report
    success without its images. Root lists anything: the CLI runs without the capabilities
    that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as any other user would."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop the capabilities")
    hidden = tree / "cat" / "more"
    hidden.mkdir()
    write(hidden / "x.jpg", jpeg_bytes(7))
    hidden.chmod(0)
    dst = tmp_path / "out.lmdb"
    try:
        proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                               sys.executable, "-m", "lmdbio.cli", "convert", str(tree),
                               str(dst), "-q", "--allow-empty"],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        hidden.chmod(0o755)
    assert_one_line_error(proc, "cannot list folder", str(hidden), "Permission denied")
    assert_no_output(dst)


def test_python_dash_m_lmdbio_is_the_command(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmdbio", "--version"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("lmdbio "), proc.stderr


def test_a_reader_that_stops_early_is_no_error(tree: Path, tmp_path: Path) -> None:
    """`lmdbio info ... | head`: the closed pipe ends the command quietly, as SIGPIPE would."""
    db = lmdbio.convert(tree, tmp_path / "db.lmdb", progress=False).destination
    proc = subprocess.Popen([sys.executable, "-m", "lmdbio.cli", "info", "--json", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes a byte
    assert proc.wait(timeout=120) == 128 + 13, proc.returncode
    assert proc.stderr.read() == b""


def test_source_without_class_folders(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    write(src / "a.jpg", jpeg_bytes(1))  # images, but no class folder
    dst = tmp_path / "out.lmdb"
    assert_one_line_error(run_cli("convert", src, dst), str(src), "no class folder")
    assert_no_output(dst)


def test_a_class_without_images(tree: Path, tmp_path: Path) -> None:
    write(tree / "empty class" / "notes.txt", b"no images here")
    (tree / "also empty").mkdir()
    dst = tmp_path / "out.lmdb"
    line = assert_one_line_error(run_cli("convert", tree, dst), str(tree),
                                 "also empty, empty class", ".jpg", ".webp")
    assert "cat" not in line.split("classes")[1].split(" in ")[0]
    assert_no_output(dst)


@pytest.mark.parametrize("kind", ["random", "empty", "broken-symlink", "directory-like"])
def test_a_bad_image_fails_the_conversion(tree: Path, tmp_path: Path, kind: str) -> None:
    bad = tree / "sea lion" / "bad file.jpg"
    if kind == "random":
        bad.write_bytes(os.urandom(5000))
        reason = "not a readable image: cannot identify image file"
    elif kind == "empty":
        bad.write_bytes(b"")
        reason = "not a readable image"
    elif kind == "broken-symlink":
        bad.symlink_to(tmp_path / "gone.jpg")
        reason = "cannot read: No such file or directory"
    else:  # a PNG signature followed by garbage
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
        reason = "not a readable image"
    dst = tmp_path / "out.lmdb"
    line = assert_one_line_error(run_cli("convert", tree, dst, "-q"), repr(str(bad)), reason)
    assert "--on-error skip" in line
    assert "0x" not in line  # no "<_io.BytesIO object at 0x...>" noise
    assert_no_output(dst)


def test_a_bad_image_with_an_awkward_name_still_gives_one_line(tree: Path,
                                                              tmp_path: Path) -> None:
    bad = write(tree / "cat" / "bad\nname ü.jpg", b"garbage")
    dst = tmp_path / "out.lmdb"
    line = assert_one_line_error(run_cli("convert", tree, dst, "-q"))
    assert repr(str(bad)) in line  # the newline is escaped, not printed
    assert_no_output(dst)


def test_the_error_line_stands_alone_after_a_progress_bar(tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "src", per_class=30)
    bad = write(tree / "b" / "99999.jpg", os.urandom(3000))  # last in the listing
    dst = tmp_path / "out.lmdb"
    proc = run_cli("convert", tree, dst, "--workers", "1")  # progress bar on
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    errors = [ln for ln in lines if "lmdbio: error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("lmdbio: error: "), proc.stderr
    assert lines[-1] == errors[0] and str(bad) in errors[0]
    assert_no_output(dst)


def test_truncated_jpeg_is_caught_by_its_missing_end_marker(tree: Path, tmp_path: Path) -> None:
    victim = tree / "cat" / "00001.jpg"
    whole = jpeg_bytes(77, (64, 64), noise=30)
    victim.write_bytes(whole[: len(whole) // 2])
    dst = tmp_path / "out.lmdb"
    for extra in ((), ("--verify-images",)):
        line = assert_one_line_error(run_cli("convert", tree, dst, "-q", *extra),
                                     repr(str(victim)), "truncated")
        assert_no_output(dst)
        assert "truncated" in line


def test_damage_inside_a_jpeg_needs_a_decode(tree: Path, tmp_path: Path) -> None:
    victim = tree / "cat" / "00001.jpg"
    whole = bytearray(jpeg_bytes(77, (64, 64), noise=30))
    table = whole.index(b"\xff\xc4")
    whole[table + 5:table + 21] = b"\xff" * 16  # a bogus Huffman table: headers still parse
    victim.write_bytes(bytes(whole))
    dst = tmp_path / "out.lmdb"
    # sound structure and end marker: the structural opt-out stores it (its stated guarantee
    # is a complete file, not a decodable one) ...
    proc = run_cli("convert", tree, dst, "-q", "--check", "structure")
    assert proc.returncode == 0, proc.stderr
    assert lmdbio.info(dst).num_samples == 6
    # ... the default check decodes, and so refuses it, as --verify-images (a full decode) does
    assert_one_line_error(run_cli("convert", tree, tmp_path / "d.lmdb", "-q"), repr(str(victim)))
    assert_one_line_error(run_cli("convert", tree, tmp_path / "v.lmdb", "-q",
                                  "--verify-images"), repr(str(victim)))


def test_jpeg_magic_around_garbage_is_refused(tree: Path, tmp_path: Path) -> None:
    victim = tree / "cat" / "00001.jpg"
    victim.write_bytes(b"\xff\xd8\xff" + b"garbage" * 50 + b"\xff\xd9")
    assert_one_line_error(run_cli("convert", tree, tmp_path / "out.lmdb", "-q"),
                          repr(str(victim)))


# -- the destination ------------------------------------------------------------------------------


def test_a_dangling_link_as_destination_is_refused_before_converting(tree: Path,
                                                                     tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    dst.symlink_to(tmp_path / "nowhere" / "x.lmdb")
    proc = run_cli("convert", tree, dst)
    assert_one_line_error(proc, str(dst), "symbolic link to nothing", "--overwrite")
    assert proc.stdout == ""  # refused up front: nothing was converted
    assert run_cli("convert", tree, dst, "--overwrite", "-q").returncode == 0
    assert not dst.is_symlink() and lmdbio.info(dst).num_samples == 6


def test_existing_destination_needs_overwrite(tree: Path, tmp_path: Path) -> None:
    dst = write(tmp_path / "out.lmdb", b"precious")
    assert_one_line_error(run_cli("convert", tree, dst), str(dst), "already exists",
                          "--overwrite")
    assert dst.read_bytes() == b"precious"
    assert not Path(f"{dst}.partial").exists()
    proc = run_cli("convert", tree, dst, "--overwrite", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert f"wrote 6 images of 2 classes to {dst}" in proc.stdout
    assert lmdbio.info(dst).class_counts == {"cat": 3, "sea lion": 3}
    assert not Path(f"{dst}.partial").exists()


def test_overwrite_replaces_an_older_database(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    assert run_cli("convert", tree, dst, "-q").returncode == 0
    write(tree / "cat" / "zzz.jpg", jpeg_bytes(4242))
    assert_one_line_error(run_cli("convert", tree, dst, "-q"), "already exists")
    assert lmdbio.info(dst).num_samples == 6
    assert run_cli("convert", tree, dst, "-q", "--overwrite").returncode == 0
    assert lmdbio.info(dst).num_samples == 7


@pytest.mark.parametrize("spelled", ["direct", "through a link to the source"])
def test_overwrite_never_replaces_one_of_the_source_images(tree: Path, tmp_path: Path,
                                                           spelled: str) -> None:
    victim = next((tree / "cat").iterdir())
    before = victim.read_bytes()
    dst = victim
    if spelled != "direct":
        (tmp_path / "link").symlink_to(tree, target_is_directory=True)
        dst = tmp_path / "link" / "cat" / victim.name
    assert_one_line_error(run_cli("convert", tree, dst, "-q", "--overwrite"),
                          f"{str(dst)!r} is one of the images of", "choose a file outside")
    assert victim.read_bytes() == before
    assert not list((tree / "cat").glob("*.partial"))  # refused before anything is written
    # a new database beside the classes, inside the source's folder, is fine
    assert run_cli("convert", tree, tree / "train.lmdb", "-q").returncode == 0


def test_destination_folder_missing(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "no" / "such" / "out.lmdb"
    assert_one_line_error(run_cli("convert", tree, dst), str(dst.parent), "does not exist")
    assert not dst.parent.exists()


def test_destination_is_a_directory(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    dst.mkdir()
    for extra in ([], ["--overwrite"]):
        assert_one_line_error(run_cli("convert", tree, dst, *extra), str(dst), "is a directory")
        assert dst.is_dir() and list(dst.iterdir()) == []
        assert not Path(f"{dst}.partial").exists()


def test_concurrent_conversion_is_refused(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    partial = Path(f"{dst}.partial")
    with open(partial, "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running conversion holds it
        assert_one_line_error(run_cli("convert", tree, dst), str(partial), "another conversion")
        assert partial.exists()  # not ours to delete
    assert not dst.exists()
    assert run_cli("convert", tree, dst, "-q").returncode == 0  # lock released: it works
    assert not partial.exists()


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--commit-mb", "0"],
                                  ["--on-error", "ignore"], ["--workers", "x"]])
def test_bad_option_values_are_usage_errors(tree: Path, tmp_path: Path, argv) -> None:
    dst = tmp_path / "out.lmdb"
    proc = run_cli("convert", tree, dst, *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("lmdbio convert: error: argument "
                                                   + argv[0])
    assert_no_output(dst)


@pytest.mark.parametrize("argv, api, line", [
    (["--verify-images", "--check", "structure"], dict(verify_images=True, check="structure"),
     "--verify-images asks for --check full, not --check structure; give one of them"),
    (["--check", "structure", "--verify-images"], dict(verify_images=True, check="structure"),
     "--verify-images asks for --check full, not --check structure; give one of them"),
    (["--quality", "50"], dict(quality=50),
     "--quality 50 applies only to images resized with --max-size N; add --max-size N or "
     "drop --quality 50"),
])
def test_options_that_contradict_each_other_are_refused_in_the_callers_words(
        tree: Path, tmp_path: Path, argv, api, line) -> None:
    """Before, --verify-images silently won over --check structure; each message names the
    options as the caller wrote them: flags on the command line, keywords in Python."""
    dst = tmp_path / "out.lmdb"
    proc = run_cli("convert", tree, dst, "-q", *argv)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [f"lmdbio: error: {line}"]
    assert_no_output(dst)
    with pytest.raises(lmdbio.ConvertOptionError) as raised:
        lmdbio.convert(tree, dst, progress=False, **api)
    assert "--" not in str(raised.value) and "=" in str(raised.value)
    assert_no_output(dst)


# -- --on-error skip ------------------------------------------------------------------------------


def test_on_error_skip_reports_and_leaves_out_bad_files(tree: Path, tmp_path: Path) -> None:
    bad = {
        "cat/corrupt.jpg": os.urandom(4000),
        "cat/empty.jpg": b"",
        os.fsdecode(b"sea lion/caf\xe9 bad.jpg"): b"not an image",  # a non-UTF-8 name
    }
    for rel, data in bad.items():
        write(tree / rel, data)
    (tree / "sea lion" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    bad["sea lion/dangling.jpg"] = b""
    from torchvision.datasets.folder import make_dataset as tv_make_dataset

    listing = tv_make_dataset(str(tree), {"cat": 0, "sea lion": 1}, extensions=(".jpg",))
    assert len(listing) == 10
    dst = tmp_path / "out.lmdb"
    # a strict UTF-8 stdout (as under an en_US.UTF-8 locale) must not choke on the latin-1 name
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = run_cli("convert", tree, dst, "-q", "--on-error", "skip", env=strict)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "wrote 6 images of 2 classes" in proc.stdout
    assert "skipped 4 bad files:" in proc.stdout
    for rel in bad:
        escaped = rel.encode("utf-8", "backslashreplace").decode()  # caf\udce9
        assert f"  {escaped}: " in proc.stdout, (escaped, proc.stdout)
    with lmdbio.open_database(dst) as db:
        assert len(db) == 6
        assert sorted(p for p, _ in db.meta.skipped) == sorted(bad)
        assert all(reason for _, reason in db.meta.skipped)
        kept = [(os.path.relpath(p, tree), t) for p, t in listing
                if os.path.relpath(p, tree) not in bad]
        assert list(zip(db.relative_paths(), db.targets())) == kept
        for index, (rel, target) in enumerate(kept):
            assert db.get(index) == (target, (tree / rel).read_bytes())
    info = run_cli("info", dst, "--json", env=strict)
    assert info.returncode == 0, info.stderr
    body = json.loads(info.stdout)
    assert body["skipped"] == 4 and body["num_samples"] == 6
    assert body["class_counts"] == {"cat": 3, "sea lion": 3}
    assert "skipped at conversion: 4" in run_cli("info", dst).stdout
    assert lmdbio.verify(dst).ok


def test_on_error_skip_everything_in_a_class(tmp_path: Path) -> None:
    tree = build_simple_tree(tmp_path / "src", per_class=2)
    for path in (tree / "b").iterdir():
        path.write_bytes(b"junk")
    # a class left empty is kept only when asked for, as torchvision's allow_empty
    report = lmdbio.convert(tree, tmp_path / "out.lmdb", on_error="skip", progress=False,
                            allow_empty=True)
    assert report.num_samples == 2 and len(report.skipped) == 2
    assert lmdbio.info(report.destination).class_counts == {"a": 2, "b": 0}


# -- other commands -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "verify", "extract"])
def test_reading_commands_on_missing_and_non_lmdb_files(tmp_path: Path, command: str) -> None:
    extra = [tmp_path / "outdir"] if command == "extract" else []
    missing = tmp_path / "missing.lmdb"
    assert_one_line_error(run_cli(command, missing, *extra), str(missing), "does not exist")
    junk = write(tmp_path / "junk.lmdb", os.urandom(20000))
    assert_one_line_error(run_cli(command, junk, *extra), str(junk), "not an LMDB file")
    assert not (tmp_path / "outdir").exists()
    assert sorted(os.listdir(tmp_path)) == ["junk.lmdb"]  # no lock file, nothing created


# -- start-up cost: no torch ----------------------------------------------------------------------

PROBE = """
import sys
import lmdbio
assert "torch" not in sys.modules and "torchvision" not in sys.modules, "import lmdbio"
import lmdbio.cli
for argv in ([ "convert", sys.argv[1], sys.argv[2], "-q"], ["info", sys.argv[2]],
             ["verify", sys.argv[2], "-q"], ["extract", sys.argv[2], sys.argv[3], "-q"]):
    assert lmdbio.cli.main(argv) == 0, argv
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print("HEAVY", heavy)
lmdbio.ImageFolderLMDB  # the lazy attribute does import torch
print("AFTER", "torch" in sys.modules)
"""


def test_cli_commands_do_not_import_torch(tree: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(tmp_path / "o.lmdb"),
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "AFTER True" in proc.stdout


def test_import_time_lists_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import lmdbio, lmdbio.cli"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "lmdbio.database" in imported and "lmdb" in imported
    assert not [m for m in imported if m.split(".")[0] in ("torch", "torchvision")]


# -- where the output goes ------------------------------------------------------------------------


@pytest.mark.parametrize("src_arg", ["train", "train/", "./train//"])
def test_default_destination_sits_next_to_the_source(tmp_path: Path, src_arg: str) -> None:
    build_simple_tree(tmp_path / "train", per_class=1)
    proc = run_cli("convert", src_arg, "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["train", "train.lmdb"]
    assert lmdbio.info(tmp_path / "train.lmdb").num_samples == 2


def test_relative_destination_and_home_expansion(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    build_simple_tree(tmp_path / "data" / "train", per_class=1)
    proc = run_cli("convert", "data/train", "out.lmdb", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.lmdb").is_file()
    monkeypatch.setenv("HOME", str(tmp_path))
    report = lmdbio.convert("~/data/train", "~/home.lmdb", progress=False)
    assert report.destination == str(tmp_path / "home.lmdb")
    assert (tmp_path / "home.lmdb").is_file() and not (Path.cwd() / "~").exists()


def test_failed_overwrite_keeps_the_old_database(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    assert run_cli("convert", tree, dst, "-q").returncode == 0
    before = dst.read_bytes()
    write(tree / "cat" / "zzz.jpg", b"junk")
    assert_one_line_error(run_cli("convert", tree, dst, "-q", "--overwrite"), "zzz.jpg")
    assert dst.read_bytes() == before  # replaced only by a complete database
    assert not Path(f"{dst}.partial").exists()
    assert lmdbio.verify(dst).ok


def test_info_on_several_whole_databases_describes_each(tree: Path, tmp_path: Path) -> None:
    """Not a shard set (each is shard 0 of 1): no set to check, each described."""
    first, second = tmp_path / "a.lmdb", tmp_path / "b.lmdb"
    lmdbio.convert(tree, first, progress=False)
    lmdbio.convert(tree / "..", second, allow_empty=True, progress=False)  # other classes
    shown = run_cli("info", first, second)
    assert shown.returncode == 0, shown.stderr
    headers = [line for line in shown.stdout.splitlines() if ": lmdbio format v" in line]
    assert [line.split(": lmdbio format v")[0] for line in headers] == [str(first), str(second)]
    body = json.loads(run_cli("info", first, second, "--json").stdout)
    assert [b["path"] for b in body] == [str(first), str(second)]
    assert "shard set" not in shown.stdout


def test_a_database_whose_conversion_stopped_says_how_to_finish_it(tree: Path,
                                                                   tmp_path: Path) -> None:
    dst = tmp_path / "out.lmdb"
    write(tmp_path / "out.lmdb.partial", b"")  # what an interrupted convert leaves
    assert_one_line_error(run_cli("info", dst), str(dst), "does not exist",
                          "stopped before the end", "--resume")
    with pytest.raises(lmdbio.DatabaseNotFoundError, match="--resume"):
        lmdbio.open_database(dst)


@pytest.mark.parametrize("command", ["info", "verify", "extract"])
def test_reading_commands_given_the_image_folder_itself(tree: Path, tmp_path: Path,
                                                        command: str) -> None:
    extra = [tmp_path / "outdir"] if command == "extract" else []
    assert_one_line_error(run_cli(command, tree, *extra), str(tree), "is a folder",
                          "lmdbio convert")
    assert not (tmp_path / "outdir").exists()
    assert not (tree / "data.mdb").exists() and not (tree / "lock.mdb").exists()


def test_advise_without_torch_says_what_to_install_in_one_line(tree: Path) -> None:
    """``sys.modules[name] = None`` is how Python spells "not installed" to importlib."""
    hide = ("import sys; sys.modules['torch'] = None; from lmdbio.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", hide, "advise", str(tree)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert_one_line_error(proc, "needs torch", "pip install torch torchvision",
                          "--transform none")
    with pytest.raises(ModuleNotFoundError):  # MissingDependencyError is one
        raise lmdbio.MissingDependencyError("x")


@pytest.mark.parametrize("api, cli", [
    ("measure the decode alone: --transform none (transform='none')",
     "measure the decode alone: --transform none"),
    ("or pass on_error=\"skip\" or allow_empty=True", "or pass --on-error skip or --allow-empty"),
    ("add max_size=N or drop quality=50", "add --max-size N or drop --quality 50"),
    ("pass --overwrite (overwrite=True)", "pass --overwrite"),
    ("the max_size of 256 px", "the max_size of 256 px"),  # no keyword: left as written
])
def test_api_wording_becomes_the_command_lines(api: str, cli: str) -> None:
    from lmdbio.cli import cli_wording

    assert cli_wording(api) == cli
