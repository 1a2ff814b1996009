"""Input expansion: folders, globs, list files; stable order, no duplicates."""

from __future__ import annotations

from pathlib import Path

from ris.producer.inputs import expand_inputs


def _tree(root: Path) -> None:
    for rel in ("a/1.jpg", "a/2.PNG", "a/b/3.webp", "a/notes.txt", "c/4.jpeg", "c/5.gif"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_folder_walk_is_recursive_sorted_and_images_only(tmp_path: Path) -> None:
    _tree(tmp_path)
    got = list(expand_inputs([str(tmp_path / "a")]))
    assert got == [str(tmp_path / p) for p in ("a/1.jpg", "a/2.PNG", "a/b/3.webp")]


def test_glob_and_duplicates(tmp_path: Path) -> None:
    _tree(tmp_path)
    got = list(
        expand_inputs(
            [str(tmp_path / "c" / "*.jp*g"), str(tmp_path / "c"), str(tmp_path / "**" / "3.webp")]
        )
    )
    assert got == [
        str(tmp_path / "c/4.jpeg"),
        str(tmp_path / "c/5.gif"),
        str(tmp_path / "a/b/3.webp"),
    ]


def test_text_and_csv_lists_resolve_relative_to_the_list(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "list.txt").write_text("# comment\na/1.jpg\n\nc/5.gif\nhttps://x.test/i.jpg\n")
    (tmp_path / "list.csv").write_text("id,path,label\n1,a/2.PNG,cat\n2,c/4.jpeg,dog\n")
    got = list(expand_inputs([str(tmp_path / "list.txt"), str(tmp_path / "list.csv")]))
    assert got == [
        str(tmp_path / "a/1.jpg"),
        str(tmp_path / "c/5.gif"),
        "https://x.test/i.jpg",
        str(tmp_path / "a/2.PNG"),
        str(tmp_path / "c/4.jpeg"),
    ]


def test_missing_path_is_passed_on_for_the_job_to_report(tmp_path: Path) -> None:
    assert list(expand_inputs([str(tmp_path / "nope.jpg")])) == [str(tmp_path / "nope.jpg")]
