"""Listing SOURCE arguments: folders, single files, .txt lists, and unique relative output names."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from birddet.errors import InputError
from birddet.pipeline.sources import list_sources


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    return path


def test_folder_is_recursive_matches_extensions_in_any_case_and_names_are_relative(tmp_path: Path) -> None:
    root = tmp_path / "cam"
    _img(root / "b.JPG")
    _img(root / "sub" / "deeper" / "a.png")
    (root / "notes.txt").write_text("not an image list, never read when inside a folder")
    (root / "sub" / "data.csv").write_text("x")
    _img(root / ".hidden" / "thumb.jpg")
    items = list_sources([root])
    assert [s.file for s in items] == ["b.JPG", "sub/deeper/a.png"]
    assert all(s.path.is_absolute() and s.root == root for s in items)


def test_single_file_is_named_relative_to_its_parent(tmp_path: Path) -> None:
    f = _img(tmp_path / "x" / "bird.jpeg")
    (item,) = list_sources([str(f)])
    assert item.file == "bird.jpeg" and item.path == f


def test_list_resolves_relative_entries_against_its_folder_and_keeps_missing_ones(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "a.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\nimgs/a.jpg\n\nimgs/missing.jpg\n")
    items = list_sources([lst])
    assert [s.file for s in items] == ["imgs/a.jpg", "imgs/missing.jpg"]
    assert items[1].path == tmp_path / "imgs" / "missing.jpg"  # becomes a failure entry later, not an error now


def test_duplicate_names_from_different_roots_get_their_folder_name_in_front(tmp_path: Path) -> None:
    _img(tmp_path / "cam1" / "a.jpg")
    _img(tmp_path / "cam2" / "a.jpg")
    _img(tmp_path / "cam2" / "b.jpg")
    items = list_sources([tmp_path / "cam1", tmp_path / "cam2"])
    names = [s.file for s in items]
    assert names == ["cam1/a.jpg", "cam2/a.jpg", "b.jpg"]
    assert len(set(names)) == len(names)


def test_the_same_image_given_twice_is_listed_once(tmp_path: Path) -> None:
    f = _img(tmp_path / "d" / "a.jpg")
    assert len(list_sources([f, tmp_path / "d"])) == 1


def test_missing_source_and_empty_folder_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_sources([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        list_sources([tmp_path / "empty"])
