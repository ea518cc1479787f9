import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facecli.errors import ConfigError, ReasonCode
from facecli.sources.folder import discover_folder
from facecli.sources.manifest import read_manifest, validate_person_id


def jpeg(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 90, 60)).save(p, "JPEG")
    return p


def write(p: Path, text: str | bytes) -> Path:
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def summary(d):
    return [(p.person_id, p.person_name, [i.name for i in p.images]) for p in d.persons]


def problems(d):
    return {(p.line, p.message.split(":")[0].split(" (")[0]) for p in d.problems}


@pytest.fixture
def imgs(tmp_path):
    for n in ["a1.jpg", "a2.jpg", "b1.jpg", "c1.jpg", "sub/d1.jpg"]:
        jpeg(tmp_path / n)
    return tmp_path


def test_basic_csv_repeated_rows_and_name_default(imgs):
    m = write(imgs / "m.csv", "person_id,person_name,image\np1,Alice,a1.jpg\np2,,b1.jpg\np1,,a2.jpg\n")
    d = read_manifest(m)
    assert summary(d) == [("p1", "Alice", ["a1.jpg", "a2.jpg"]), ("p2", "p2", ["b1.jpg"])]
    assert d.problems == [] and d.persons[0].images[0] == imgs / "a1.jpg"
    assert d.persons[0].metadata == {}


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_sniffed_delimiters(imgs, sep):
    m = write(imgs / "m.csv", f"person_id{sep}image{sep}dept\np1{sep}a1.jpg{sep}R&D, Lab 2\np2{sep}sub/d1.jpg{sep}\n")
    d = read_manifest(m)
    assert summary(d) == [("p1", "p1", ["a1.jpg"]), ("p2", "p2", ["d1.jpg"])]
    assert d.persons[0].metadata == {"dept": "R&D, Lab 2"} and d.persons[1].metadata == {}


def test_bom_and_crlf_and_header_spaces(imgs):
    m = write(imgs / "m.csv", b"\xef\xbb\xbf person_id , image \r\np1,a1.jpg\r\n\r\np2 , b1.jpg\r\n")
    assert summary(read_manifest(m)) == [("p1", "p1", ["a1.jpg"]), ("p2", "p2", ["b1.jpg"])]


def test_jsonl(imgs):
    rows = [
        {"person_id": "p1", "person_name": "Ann", "images": ["a1.jpg", "a2.jpg"], "age": 41, "vip": True},
        {"person_id": 7, "image": "b1.jpg"},
        [1, 2],
    ]
    m = write(imgs / "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n{bad json\n")
    d = read_manifest(m)
    assert summary(d) == [("p1", "Ann", ["a1.jpg", "a2.jpg"])]
    assert d.persons[0].metadata == {"age": "41", "vip": "true"}  # numbers and booleans as written
    assert {(p.line, p.reason) for p in d.problems} == {
        (2, ReasonCode.INVALID_ROW), (3, ReasonCode.INVALID_ROW), (5, ReasonCode.INVALID_ROW)}
    why = {p.line: p.message for p in d.problems}
    assert 'person_id must be a string, got int (write it as a JSON string: "7")' in why[2]


def test_images_column_with_image_column_and_optional_fields(imgs):
    m = write(
        imgs / "m.csv",
        "person_id,image,images,gender,date_of_birth,nationality,notes,dept\n"
        'p1,a1.jpg,"a2.jpg; sub/d1.jpg",F,1990-01-02,NL,new hire,HR\n',
    )
    (p,) = read_manifest(m).persons
    assert [i.name for i in p.images] == ["a1.jpg", "a2.jpg", "d1.jpg"]
    assert (p.gender, p.date_of_birth, p.nationality, p.notes) == ("F", "1990-01-02", "NL", "new hire")
    assert p.metadata == {"dept": "HR"}


def test_metadata_columns_only_named_ones(imgs):
    m = write(imgs / "m.csv", "person_id,image,dept,site,badge\np1,a1.jpg,HR,,42\n")
    assert read_manifest(m).persons[0].metadata == {"dept": "HR", "badge": "42"}
    assert read_manifest(m, metadata_columns=["site", "badge"]).persons[0].metadata == {"badge": "42"}
    with pytest.raises(ConfigError, match="floor"):
        read_manifest(m, metadata_columns=["floor"])


def test_mapping_renames_columns(imgs):
    m = write(imgs / "m.csv", "EmployeeID,Full Name,Photo,Dept\nE1,Ann Lee,a1.jpg,HR\n")
    d = read_manifest(m, mapping={"person_id": "EmployeeID", "person_name": "Full Name", "image": "Photo"})
    assert summary(d) == [("E1", "Ann Lee", ["a1.jpg"])]
    assert d.persons[0].metadata == {"Dept": "HR"}  # renamed columns are not metadata under old names
    with pytest.raises(ConfigError, match="Badge"):
        read_manifest(m, mapping={"person_id": "Badge", "image": "Photo"})


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"no person_id column \(found: id, image\)"):
        read_manifest(write(tmp_path / "m.csv", "id,image\n1,a.jpg\n"))
    with pytest.raises(ConfigError, match="no image or images column"):
        read_manifest(write(tmp_path / "m.csv", "person_id,name\n1,a\n"))
    for empty in ["", "\n\n", "\ufeff"]:
        with pytest.raises(ConfigError, match="manifest is empty"):
            read_manifest(write(tmp_path / "m.csv", empty))
    with pytest.raises(ConfigError, match="cannot read"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_manifest(write(tmp_path / "m.csv", "person_id,image\n".encode("utf-16")))
    with pytest.raises(ConfigError, match="twice"):
        read_manifest(write(tmp_path / "m.csv", "person_id,image,image\n"))


def test_bad_rows_reported_with_line_numbers(imgs, tmp_path):
    jpeg(tmp_path.parent / "outside.jpg")
    m = write(
        imgs / "m.csv",
        b"person_id,image\n"  # 1
        b"p1,a1.jpg\n"  # 2 ok
        b",b1.jpg\n"  # 3 empty id
        b"p3,nope.jpg\n"  # 4 missing file
        b"p4,../../etc/passwd\n"  # 5 escapes
        b"p5,/etc/passwd\n"  # 6 absolute
        b"p6,c1.jpg,extra\n"  # 7 too many fields
        b"p7\n"  # 8 too few fields
        b"\n"  # 9 blank: silent
        b"p9,\xff\xfe.jpg\n"  # 10 not UTF-8
        b"a/b,c1.jpg\n"  # 11 bad id
        b"p12,\n"  # 12 no image
        b"p2,b1.jpg\n",  # 13 ok
    )
    d = read_manifest(m)
    assert summary(d) == [("p1", "p1", ["a1.jpg"]), ("p2", "p2", ["b1.jpg"])]
    assert all(p.reason == ReasonCode.INVALID_ROW for p in d.problems)
    by_line = {p.line: p for p in d.problems}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 10, 11, 12]
    assert by_line[3].message == "empty person_id"
    assert by_line[4].message == f"image not found: {imgs / 'nope.jpg'}" and by_line[4].path == str(imgs / "nope.jpg")
    assert "escapes" in by_line[5].message and "absolute" in by_line[6].message
    assert by_line[7].message == "expected 2 fields, got 3" and by_line[8].message == "expected 2 fields, got 1"
    assert by_line[7].path == f"{m}:7"
    assert "line 10" in by_line[10].message and "0xff" in by_line[10].message
    offset = m.read_bytes().index(b"\xff")
    assert f"offset {offset}" in by_line[10].message
    assert "'/'" in by_line[11].message and by_line[11].person_id == "a/b"
    assert by_line[12].message == "missing image"
    assert summary(read_manifest(write(m, "person_id,image\np5,/etc/hostname\n"), allow_absolute=True)) == (
        [("p5", "p5", ["hostname"])] if Path("/etc/hostname").is_file() else []
    )


def test_unbalanced_quote_is_one_problem(imgs):
    d = read_manifest(write(imgs / "m.csv", 'person_id,image,dept\np1,"a1.jpg,HR\np2,b1.jpg,IT\n'))
    assert d.persons == [] and len(d.problems) == 1 and d.problems[0].line == 2
    assert d.problems[0].message == "expected 3 fields, got 2 (record spans lines 2-3: unbalanced quote?)"
    d = read_manifest(write(imgs / "m.csv", 'person_id,image\np1,"a1.jpg\np2,b1.jpg\n'))
    assert d.persons == [] and len(d.problems) == 1 and "control characters" in d.problems[0].message


def test_duplicates_and_conflicting_names(imgs):
    m = write(
        imgs / "m.csv",
        "person_id,person_name,image\np1,,a1.jpg\np1,Ann,a2.jpg\np1,Ann,./a1.jpg\np1,Anne,b1.jpg\np1,,sub/../a1.jpg\n",
    )
    d = read_manifest(m)
    assert summary(d) == [("p1", "Ann", ["a1.jpg", "a2.jpg"])]  # first explicit name wins
    assert [(p.line, p.message) for p in d.problems] == [
        (4, "duplicate row (same person_id and image as line 2)"),
        (5, "conflicting person_name 'Anne' for 'p1' (line 3 says 'Ann')"),
        (6, "duplicate row (same person_id and image as line 2)"),
    ]


def test_person_with_only_invalid_rows_is_absent(imgs):
    d = read_manifest(write(imgs / "m.csv", "person_id,image\nghost,x.jpg\nghost,y.jpg\np1,a1.jpg\n"))
    assert summary(d) == [("p1", "p1", ["a1.jpg"])]
    assert [p.person_id for p in d.problems] == ["ghost", "ghost"]


def test_symlinks(tmp_path):
    root = tmp_path / "root"
    outside = jpeg(tmp_path / "secret.jpg")
    jpeg(root / "in.jpg")
    os.symlink(outside, root / "out_link.jpg")
    os.symlink(root / "in.jpg", root / "in_link.jpg")
    m = write(root / "m.csv", "person_id,image\np1,out_link.jpg\np2,in_link.jpg\n")
    d = read_manifest(m)
    assert summary(d) == [("p2", "p2", ["in_link.jpg"])]
    assert d.problems[0].line == 2 and "symbolic link" in d.problems[0].message
    followed = read_manifest(m, follow_symlinks=True)
    assert summary(followed) == [("p1", "p1", ["out_link.jpg"]), ("p2", "p2", ["in_link.jpg"])]


def test_validate_person_id():
    for ok in ["a", "emp_1042", "Ann Lee", "x@y.com", "a:b+c-d.e", "9" * 128]:
        assert validate_person_id(ok) is None, ok
    for bad in ["", " a", "a ", "a/b", "a\\b", "a\tb", "a\nb", "josé", "9" * 129, "a\x00"]:
        assert validate_person_id(bad), bad


def test_folder_and_manifest_give_equal_persons(tmp_path):
    for n in ["alice/a1.jpg", "alice/a2.jpg", "bob/b1.jpg"]:
        jpeg(tmp_path / n)
    m = write(
        tmp_path / "m.csv",
        "person_id,person_name,image\nalice,alice,alice/a1.jpg\nalice,alice,alice/a2.jpg\nbob,bob,bob/b1.jpg\n",
    )
    assert read_manifest(m).persons == discover_folder(tmp_path).persons


# --- never raises on bad content -----------------------------------------------------------------

_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fuzz_one(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as td:
        jpeg(Path(td) / "a.jpg")
        p = Path(td) / f"m{suffix}"
        p.write_bytes(data)
        try:
            d = read_manifest(p)
        except ConfigError:
            return
        assert all(p.reason == ReasonCode.INVALID_ROW and p.line for p in d.problems)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("header", [True, False])
@given(text=st.text())
@_fuzz
def test_any_text_is_rows_or_problems(text, header, suffix):
    head = ("person_id,image\n" if suffix == ".csv" else '{"person_id": "p", "image": "a.jpg"}\n') if header else ""
    _fuzz_one((head + text).encode("utf-8", "surrogatepass"), suffix)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("header", [True, False])
@given(data=st.binary())
@_fuzz
def test_any_bytes_are_rows_or_problems(data, header, suffix):
    head = (b"person_id,image\n" if suffix == ".csv" else b'{"person_id": "p", "image": "a.jpg"}\n') if header else b""
    _fuzz_one(head + data, suffix)


@given(
    rows=st.lists(
        st.lists(st.sampled_from(["p1", "a.jpg", "", " ", '"', "..", "/x", ";", "a.jpg;a.jpg", "\r", "é", "\0"]),
                 max_size=4),
        max_size=8,
    )
)
@_fuzz
def test_structured_rows_never_raise(rows):
    _fuzz_one(("person_id,image\n" + "\n".join(",".join(r) for r in rows)).encode(), ".csv")
