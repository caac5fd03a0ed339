"""WebDataset tar shards (img2dataset's layout) read as paired datasets, straight from the archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tasks.data import webdataset
from tasks.data.sources import ColumnMap
from tasks.data.tables import load_paired_dataset
from tests.tasks.data.sample_images import png_bytes

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta"]


def _shard(path: Path, samples: list[dict[str, bytes]], mode: str = "w") -> Path:
    """A tar shard: each sample a ``{suffix: content}`` under its key, members in sample order."""
    with tarfile.open(path, mode) as archive:
        for sample in samples:
            key = sample.pop("__key__")
            for suffix, content in sample.items():
                info = tarfile.TarInfo(key + suffix)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


def _coloured(key: str, colour: str, **members: bytes) -> dict[str, bytes]:
    return {"__key__": key, ".png": png_bytes(colour), **members}


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Two shards of three samples (img2dataset's layout: .png, .txt, .json with caption and url,
    a .parquet and _stats.json beside the shards)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for s in range(2):
        _shard(folder / f"{s:05d}.tar", [
            _coloured(f"{s:05d}{i:04d}", colour, **{".txt": f"a {colour} square\n".encode(),
                                                     ".json": json.dumps({"caption": f"json {colour}", "url": f"http://x/{colour}"}).encode()})
            for i, colour in enumerate(COLOURS[3 * s: 3 * s + 3])])
        (folder / f"{s:05d}.parquet").write_bytes(b"PAR1")
        (folder / f"{s:05d}_stats.json").write_text("{}")
    return folder


def _colour_of(image: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(image)).convert("RGB").getpixel((4, 4))


def test_a_folder_of_shards_reads_every_sample_in_shard_order(shards: Path) -> None:
    result = load_paired_dataset(shards)
    table = result.table
    assert table.column("sample_id").to_pylist() == [f"{s:05d}{i:04d}" for s in range(2) for i in range(3)]
    assert table.column("text").to_pylist() == [f"a {c} square" for c in COLOURS]  # .txt first, its first line
    assert [_colour_of(image) for image in table.column("image").to_pylist()] == [Image.new("RGB", (1, 1), c).getpixel((0, 0)) for c in COLOURS]
    assert result.rejected.num_rows == 0


def test_a_txt_caption_is_read_whole_and_a_text_column_names_a_json_field(tmp_path: Path) -> None:
    """WebDataset readers take KEY.txt whole (LAION alt text has newlines); a text column other
    than `text` reads that JSON field even beside a .txt (img2dataset writes one for every sample)."""
    shard = _shard(tmp_path / "s.tar", [
        _coloured("a", "red", **{".txt": b"Vintage poster\nParis 1920\n", ".json": json.dumps({"url": "http://x/a"}).encode()}),
        _coloured("b", "blue", **{".txt": b"blue", ".json": json.dumps({"url": "http://x/b"}).encode()}),
    ])
    assert load_paired_dataset(shard).table.column("text").to_pylist() == ["Vintage poster\nParis 1920", "blue"]
    assert load_paired_dataset(shard, columns=ColumnMap(captions="all")).table.num_rows == 2
    urls = load_paired_dataset(shard, columns=ColumnMap(text="url")).table.column("text").to_pylist()
    assert urls == ["http://x/a", "http://x/b"]


def test_an_image_column_names_the_image_suffix(tmp_path: Path) -> None:
    two = {"__key__": "k", ".jpg": png_bytes("red"), ".png": png_bytes("blue"), ".txt": b"two images"}
    one = {"__key__": "m", ".jpg": png_bytes("green"), ".png": png_bytes("cyan"), ".txt": b"two more"}
    shard = _shard(tmp_path / "s.tar", [two, one])
    chosen = load_paired_dataset(shard, columns=ColumnMap(image="png"))
    assert [_colour_of(i) for i in chosen.table.column("image").to_pylist()] == [(0, 0, 255), (0, 255, 255)]
    assert chosen.rejected.num_rows == 0
    jpg = load_paired_dataset(_shard(tmp_path / "u.tar", [dict(two, __key__="k"), dict(one, __key__="m")]),
                              columns=ColumnMap(image="jpg"))
    assert [_colour_of(i) for i in jpg.table.column("image").to_pylist()] == [(255, 0, 0), (0, 128, 0)]


def test_a_sample_with_two_images_and_no_image_column_is_refused_as_ambiguous(tmp_path: Path) -> None:
    """A sample with ``KEY.jpg`` and ``KEY.png`` had been read with whichever image came first in the
    archive (the tar writer's order decided the dataset), and the other reported as a second rejected
    row, ``sample_id_duplicate``, although no id was repeated: a 2-sample shard read 2 rows and
    reported 2 rejected. Which member is the sample's image is not for the reader to guess (a photo
    beside its mask): the sample is one rejected row, ``image_ambiguous``, naming its images and the
    image column that picks one."""
    samples = [{"__key__": "k", ".png": png_bytes("blue"), ".jpg": png_bytes("red"), ".txt": b"two images"},
               {"__key__": "m", ".jpg": png_bytes("green"), ".webp": png_bytes("cyan"), ".png": png_bytes("gray"),
                ".json": json.dumps({"caption": ["one", "two"]}).encode()},
               _coloured("ok", "yellow", **{".txt": b"one image"}), _coloured("ok2", "cyan", **{".txt": b"one too"})]
    for captions in ("first", "all"):
        result = load_paired_dataset(_shard(tmp_path / f"{captions}.tar", [dict(s) for s in samples]),
                                     columns=ColumnMap(captions=captions))
        assert result.table.column("sample_id").to_pylist() == ["ok", "ok2"]
        rejected = list(zip(result.rejected.column("sample_id").to_pylist(), result.rejected.column("reason").to_pylist(),
                            result.rejected.column("detail").to_pylist()))
        assert rejected == [
            ("k", "image_ambiguous", f"{captions}.tar: sample k has 2 image members (k.jpg, k.png) and the image column "
                                     "names none of them: set the image column to one suffix ('jpg' or 'png')"),
            ("m", "image_ambiguous", f"{captions}.tar: sample m has 3 image members (m.jpg, m.png, m.webp) and the image "
                                     "column names none of them: set the image column to one suffix ('jpg', 'png' or 'webp')"),
        ]


def test_json_captions_and_a_named_caption_field(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "s.tar.gz", [
        _coloured("a", "red", **{".json": json.dumps({"caption": "a red thing", "alt": "red alt"}).encode()}),
        _coloured("b", "blue", **{".json": json.dumps({"caption": ["blue one", "blue two"], "alt": "blue alt"}).encode()}),
    ], mode="w:gz")
    assert load_paired_dataset(shard).table.column("text").to_pylist() == ["a red thing", "blue one"]
    assert load_paired_dataset(shard, columns=ColumnMap(text="alt")).table.column("text").to_pylist() == ["red alt", "blue alt"]
    everything = load_paired_dataset(shard, columns=ColumnMap(captions="all")).table
    assert everything.column("text").to_pylist() == ["a red thing", "blue one", "blue two"]


def test_n_reads_only_the_first_samples(shards: Path) -> None:
    (shards / "00001.tar").write_bytes(b"not a tar archive")  # never opened: the first shard has enough
    assert load_paired_dataset(shards, n=3).table.column("sample_id").to_pylist() == ["000000000", "000000001", "000000002"]
    assert load_paired_dataset(shards, n=2).table.column("sample_id").to_pylist() == ["000000000", "000000001"]


def test_incomplete_samples_are_rejected_naming_what_they_lack(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", 4096)
    shard = _shard(tmp_path / "s.tar", [
        _coloured("ok1", "red", **{".txt": b"red"}),
        {"__key__": "noimage", ".txt": b"a caption alone"},
        _coloured("nocaption", "blue", **{".cls": b"3"}),
        {"__key__": "huge", ".png": b"\0" * 5000, ".txt": b"too big"},
        _coloured("badjson", "green", **{".json": b"{not json"}),
        _coloured("ok2", "cyan", **{".txt": b"cyan"}),
    ])
    result = load_paired_dataset(shard)
    assert result.table.column("sample_id").to_pylist() == ["ok1", "ok2"]
    reasons = dict(zip(result.rejected.column("sample_id").to_pylist(), result.rejected.column("reason").to_pylist()))
    assert reasons == {"noimage": "image_missing", "nocaption": "text_missing", "huge": "image_too_large", "badjson": "row_malformed"}
    assert "5,000 bytes" in result.rejected.column("detail").to_pylist()[2]


def test_a_file_name_with_more_dots_is_named_where_its_sample_lacks_a_member(tmp_path: Path) -> None:
    """A key ends at the first dot of a member's name (WebDataset's rule): ``IMG_1.final.jpg``
    tarred from a photo folder is member ``.final.jpg`` of sample ``IMG_1``, no image. The sample
    was refused as "has no image member" beside the very file; the message now names the member
    that was not read and why."""
    shard = _shard(tmp_path / "s.tar", [
        {"__key__": "IMG_1", ".final.jpg": png_bytes("red"), ".final.txt": b"red"},
        {"__key__": "IMG_2", ".png": png_bytes("blue"), ".v2.txt": b"blue"},
        _coloured("ok1", "green", **{".txt": b"green"}),
        _coloured("ok2", "cyan", **{".txt": b"cyan"}),
    ])
    result = load_paired_dataset(shard)
    assert result.table.column("sample_id").to_pylist() == ["ok1", "ok2"]
    assert list(zip(result.rejected.column("reason").to_pylist(), result.rejected.column("detail").to_pylist())) == [
        ("image_missing", "s.tar: sample IMG_1 has no image member (IMG_1.final.jpg not read: a member's suffix starts "
                          "at the first dot of its name, so IMG_1.final.jpg is '.final.jpg')"),
        ("text_missing", "s.tar: sample IMG_2 has no caption member (.txt, .text, .caption or .json) (IMG_2.v2.txt "
                         "not read: a member's suffix starts at the first dot of its name, so IMG_2.v2.txt is '.v2.txt')"),
    ]


def test_a_missing_member_names_only_the_dotted_members_that_could_have_been_it(tmp_path: Path) -> None:
    """A sample with its image and a mask beside it (``m.seg.png``) but no caption was told
    "has no caption member (...) (m.seg.png not read ...)", as if the mask were its caption; and
    the first three dotted members met were the only ones named, so three masks hid the caption
    that was there under another name (``n.en.txt``). A missing image names dotted images, a
    missing caption dotted captions."""
    masks = {f".{part}.png": png_bytes("gray") for part in ("seg", "depth", "edges")}
    shard = _shard(tmp_path / "s.tar", [
        {"__key__": "m", ".png": png_bytes("red"), ".seg.png": png_bytes("gray")},
        {"__key__": "n", ".png": png_bytes("blue"), **masks, ".en.txt": b"blue"},
        {"__key__": "p", ".en.txt": b"green", ".seg.png": png_bytes("gray")},
        _coloured("ok1", "green", **{".txt": b"green"}),
        _coloured("ok2", "cyan", **{".txt": b"cyan"}),
    ])
    details = load_paired_dataset(shard).rejected.column("detail").to_pylist()
    assert details == [
        "s.tar: sample m has no caption member (.txt, .text, .caption or .json)",
        "s.tar: sample n has no caption member (.txt, .text, .caption or .json) (n.en.txt not read: a member's suffix "
        "starts at the first dot of its name, so n.en.txt is '.en.txt')",
        "s.tar: sample p has no image member (p.seg.png not read: a member's suffix starts at the first dot of its name, "
        "so p.seg.png is '.seg.png')",
    ]


def test_a_sample_whose_members_are_not_together_is_refused_as_a_duplicate(tmp_path: Path) -> None:
    """A key that came back after other samples was read as a second sample of that id (refused
    as text_missing: its members lacked a caption), hiding that the tar was not sorted by key."""
    shard = _shard(tmp_path / "s.tar", [
        _coloured("a", "red"),  # the image of "a"...
        _coloured("b", "green", **{".txt": b"green"}),
        {"__key__": "a", ".txt": b"red"},  # ...and its caption, after "b"
        _coloured("c", "blue", **{".txt": b"blue"}),
    ])
    result = load_paired_dataset(shard)
    assert result.table.column("sample_id").to_pylist() == ["b", "c"]
    rejected = list(zip(result.rejected.column("sample_id").to_pylist(), result.rejected.column("reason").to_pylist(),
                        result.rejected.column("detail").to_pylist()))
    assert [(i, r) for i, r, _ in rejected] == [("a", "text_missing"), ("a", "sample_id_duplicate")]
    assert "members of sample a appear again after other samples" in rejected[1][2] and "sorted by key" in rejected[1][2]


def test_links_in_a_shard_are_never_followed(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as archive:
        for key, colour in (("a", "red"), ("b", "blue")):
            for suffix, content in ((".png", png_bytes(colour)), (".txt", colour.encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("c.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        text = tarfile.TarInfo("c.txt")
        text.size = 4
        archive.addfile(text, io.BytesIO(b"pass"))
    result = load_paired_dataset(shard)
    assert result.table.column("sample_id").to_pylist() == ["a", "b"]
    assert result.rejected.column("reason").to_pylist() == ["image_missing"]


def test_a_damaged_shard_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    shard = tmp_path / "bad.tar"
    shard.write_bytes(b"\x00" * 10 + b"garbage" * 100)
    with pytest.raises(ValueError, match=r"WebDataset shard '.*bad\.tar' is not a readable tar archive"):
        load_paired_dataset(shard)
    good = _shard(tmp_path / "cut.tar", [_coloured(f"k{i}", "red", **{".txt": b"red"}) for i in range(4)])
    whole = good.read_bytes()
    good.write_bytes(whole[:1800])  # cut inside the second sample's image
    with pytest.raises(ValueError, match=r"WebDataset shard '.*cut\.tar' is damaged after 'k\d'"):
        load_paired_dataset(good)
    headers = [i for i in range(512, len(whole), 512) if whole[i:i + 2] == b"k2"]  # the third sample's first header
    for broken in (whole[:headers[0] + 100],  # cut inside a header: tarfile alone stopped there silently
                   whole[:headers[0]] + b"\xff" * 512 + whole[headers[0] + 512:],  # a garbled header
                   whole[:headers[0]]):  # cut at a header: no end-of-archive blocks
        good.write_bytes(broken)
        with pytest.raises(ValueError, match=r"is damaged after 'k1'"):
            load_paired_dataset(good)
    gz = _shard(tmp_path / "cut.tar.gz", [_coloured(f"k{i}", "red", **{".txt": b"red"}) for i in range(4)], mode="w:gz")
    gz.write_bytes(gz.read_bytes()[:2])
    with pytest.raises(ValueError, match=r"'.*cut\.tar\.gz' is not a readable gzip-compressed tar archive"):
        load_paired_dataset(gz)


def test_a_compression_bomb_is_refused_and_unread_members_cost_nothing(tmp_path: Path, monkeypatch) -> None:
    bomb = _shard(tmp_path / "bomb.tar.gz", [{"__key__": f"k{i}", ".png": b"\0" * 2_000_000, ".txt": b"x"} for i in range(5)],
                  mode="w:gz")
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", 3_000_000)
    with pytest.raises(ValueError, match=r"bomb\.tar\.gz' expands to more than 100 times"):
        load_paired_dataset(bomb)
    other = _shard(tmp_path / "other.tar.gz", [_coloured(f"k{i}", "red", **{".txt": b"red", ".npy": b"\0" * 2_000_000})
                                               for i in range(3)], mode="w:gz")
    assert load_paired_dataset(other).table.num_rows == 3  # .npy members are skipped, not read


def test_a_huge_extended_header_is_refused_before_it_is_read(tmp_path: Path, monkeypatch) -> None:
    """tarfile reads a GNU long name whole before its member: a crafted size was allocated first
    (400 MiB from a 400 KB .tar.gz)."""
    monkeypatch.setattr(webdataset, "MAX_HEADER_BYTES", 1000)
    shard = tmp_path / "long.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as archive:
        for key in ("a", "b" * 3000):  # the second name needs a GNU long-name record of ~3 kB
            for suffix, content in ((".png", png_bytes("red")), (".txt", b"red")):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    with pytest.raises(ValueError, match=r"long\.tar' is damaged after 'a': .*extended header of 3,00\d bytes"):
        load_paired_dataset(shard)
    monkeypatch.setattr(webdataset, "MAX_HEADER_BYTES", 1 << 20)
    assert load_paired_dataset(shard).table.num_rows == 2


def test_keys_that_differ_only_by_a_slash_keep_distinct_ids(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "s.tar", [_coloured("sub/k1", "red", **{".txt": b"a"}), _coloured("sub_k1", "blue", **{".txt": b"b"})])
    ids = load_paired_dataset(shard).table.column("sample_id").to_pylist()
    assert len(set(ids)) == 2 and "sub_k1" in ids


def test_a_stray_text_file_beside_the_shards_does_not_hide_them(shards: Path) -> None:
    (shards / "urls.txt").write_text("http://x/a\n")
    assert load_paired_dataset(shards).table.num_rows == 6


def test_a_folder_with_images_of_its_own_is_still_an_image_folder(shards: Path) -> None:
    (shards / "extra.png").write_bytes(png_bytes("red"))
    (shards / "extra.txt").write_text("a red square")
    with pytest.raises(ValueError, match="at least 2 needed"):  # one folder pair; the shards are not read
        load_paired_dataset(shards)


def test_empty_json_captions_are_reported_as_in_a_tables_list(tmp_path: Path) -> None:
    """The data hunt: empty captions of a JSON list were dropped before anything looked at them:
    with captions=first a sample took its first non-empty caption (a table's row is rejected), with
    all an empty caption vanished without a rejection record."""
    shard = _shard(tmp_path / "s.tar", [
        _coloured("a", "red", **{".json": json.dumps({"caption": ["", "good a"]}).encode()}),
        _coloured("b", "blue", **{".json": json.dumps({"caption": ["  ", "good b", ""]}).encode()}),
        _coloured("c", "green", **{".json": json.dumps({"caption": ["c one", "c two"]}).encode()}),
        _coloured("d", "yellow", **{".json": json.dumps({"caption": ["d one"]}).encode()}),
    ])
    first = load_paired_dataset(shard)
    assert first.table.column("sample_id").to_pylist() == ["c", "d"]
    assert sorted((r["sample_id"], r["reason"]) for r in first.rejected.to_pylist()) == [("a", "text_empty"), ("b", "text_empty")]
    every = load_paired_dataset(shard, columns=ColumnMap(captions="all"))
    assert sorted(zip(every.table.column("sample_id").to_pylist(), every.table.column("text").to_pylist())) == [
        ("a-1", "good a"), ("b-1", "good b"), ("c-0", "c one"), ("c-1", "c two"), ("d", "d one")]
    assert sorted((r["sample_id"], r["reason"]) for r in every.rejected.to_pylist()) == [
        ("a-0", "text_empty"), ("b-0", "text_empty"), ("b-2", "text_empty")]


def test_a_caption_with_a_lone_surrogate_is_rejected_as_not_utf8(tmp_path: Path) -> None:
    """JSON's "\\ud83d" (half of an emoji cut off, as a scraper cutting at a UTF-16 length writes):
    the whole load failed with "'utf-8' codec can't encode character '\\ud83d'", naming nothing."""
    shard = _shard(tmp_path / "s.tar", [
        _coloured("a", "red", **{".json": json.dumps({"caption": "cut \ud83d"}).encode()}),
        _coloured("b", "blue", **{".json": json.dumps({"caption": "whole \U0001F600"}).encode()}),
        _coloured("c", "green", **{".json": json.dumps({"caption": "green"}).encode()}),
    ])
    result = load_paired_dataset(shard)
    assert result.table.column("text").to_pylist() == ["whole \U0001F600", "green"]
    [rejected] = result.rejected.to_pylist()
    assert rejected["sample_id"] == "a" and rejected["reason"] == "text_not_utf8"
    assert "lone UTF-16 surrogate (U+D83D at character 4" in rejected["detail"]


def test_an_extended_header_of_exactly_the_limit_is_read(tmp_path: Path, monkeypatch) -> None:
    """Only a header *larger* than MAX_HEADER_BYTES is refused: a GNU long name of exactly the
    limit (the name and its NUL) is read, one byte less of limit refuses it."""
    shard = tmp_path / "long.tar"
    name = "b" * 3000
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as archive:
        for key in ("a", name):
            for suffix, content in ((".png", png_bytes("red")), (".txt", b"red")):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    header = len(name + ".png") + 1
    monkeypatch.setattr(webdataset, "MAX_HEADER_BYTES", header)
    assert load_paired_dataset(shard).table.num_rows == 2
    monkeypatch.setattr(webdataset, "MAX_HEADER_BYTES", header - 1)
    with pytest.raises(ValueError, match=rf"extended header of {header:,} bytes"):
        load_paired_dataset(shard)


def test_a_limit_of_zero_reads_no_sample(shards: Path) -> None:
    """``limit``: the first ``limit`` samples; none for 0 (never one)."""
    assert webdataset.read_shards(webdataset.shards_in(shards), limit=0) == []
    assert len(webdataset.read_shards(webdataset.shards_in(shards), limit=2)) == 2


def test_a_json_caption_list_with_a_non_text_item_is_malformed(tmp_path: Path) -> None:
    """A caption field must be text or a list of texts: ``["a cat", 3]`` is ``row_malformed``
    (not its first caption kept)."""
    bad = json.dumps({"caption": ["a red square", 3]}).encode()
    shard = _shard(tmp_path / "s.tar", [_coloured("k0", "red", **{".json": bad}),
                                        _coloured("k1", "green", **{".txt": b"green"}),
                                        _coloured("k2", "blue", **{".txt": b"blue"})])
    result = load_paired_dataset(shard)
    assert [(r["sample_id"], r["reason"]) for r in result.rejected.to_pylist()] == [("k0", "row_malformed")]


def test_the_member_and_expansion_limits_are_inclusive(tmp_path: Path, monkeypatch) -> None:
    """A member of exactly MAX_MEMBER_BYTES is read (only a larger one is refused), and members
    adding up to exactly the expansion budget are read (only going past it refuses the shard)."""
    samples = [_coloured("k0", "red", **{".txt": b"red"}), _coloured("k1", "blue", **{".txt": b"blue"})]
    total = sum(len(content) for s in samples for k, content in s.items() if k != "__key__")
    biggest = max(len(content) for s in samples for k, content in s.items() if k != "__key__")
    shard = _shard(tmp_path / "s.tar", samples)
    monkeypatch.setattr(webdataset, "MAX_EXPANSION", 0)  # the budget is then MAX_MEMBER_BYTES
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", total)
    assert load_paired_dataset(shard).table.num_rows == 2
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", total - 1)
    with pytest.raises(ValueError, match="compression bomb"):
        load_paired_dataset(shard)
    monkeypatch.setattr(webdataset, "MAX_EXPANSION", 1000)
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", biggest)
    assert load_paired_dataset(shard).table.num_rows == 2
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", biggest - 1)
    assert "image_too_large" in load_paired_dataset(shard, min_valid_rows=0).summary()


def test_one_end_of_archive_block_is_enough(tmp_path: Path) -> None:
    """The stream must end in zero blocks, at least one (512 bytes) after the last member; fewer
    zero bytes is a shard cut short."""
    raw = _shard(tmp_path / "full.tar", [_coloured("k0", "red", **{".txt": b"red"}),
                                         _coloured("k1", "blue", **{".txt": b"blue"})]).read_bytes()
    body = raw.rstrip(b"\0")
    body += b"\0" * (-len(body) % 512)  # the last member's data block, padded
    (tmp_path / "one.tar").write_bytes(body + b"\0" * 512)
    assert load_paired_dataset(tmp_path / "one.tar").table.num_rows == 2
    (tmp_path / "cut.tar").write_bytes(body + b"\0" * 511)
    with pytest.raises(ValueError, match="without the end-of-archive blocks"):
        load_paired_dataset(tmp_path / "cut.tar")
