"""storage.human: readers for human memorability data, exclusion, matching."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memscore.storage.human import Exclusion, HumanDataError, key_sql, lit, load_human, read_human_scores


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_lamem_split_file(tmp_path):
    path = _write(tmp_path / "train_1.txt", "00000001.jpg 0.75\n00000002.jpg 0.5\n\n00000003.jpg 0.9125\n")
    table = read_human_scores(path)
    assert table.column_names[:2] == ["image", "human"]
    assert table.schema.field("image").type == pa.string() and table.schema.field("human").type == pa.float64()
    assert table.to_pydict()["image"] == ["00000001.jpg", "00000002.jpg", "00000003.jpg"]
    assert table.to_pydict()["human"] == [0.75, 0.5, 0.9125]
    with_header = _write(tmp_path / "scores.txt", "image score\na.jpg 0.1\nb.jpg 0.2\n")
    assert read_human_scores(with_header, format="lamem").to_pydict()["image"] == ["a.jpg", "b.jpg"]


def test_memcat_style_csv_keeps_categories(tmp_path):
    path = _write(tmp_path / "memcat.csv", "image_file,category,subcategory,memorability\n"
                                           "animal/a1.jpg,animal,dog,0.8\nfood/f1.jpg,food,cake,0.6\n"
                                           "sports/s1.jpg,sports,golf,0.7\n")
    table = read_human_scores(path)
    assert table.to_pydict()["human"] == [0.8, 0.6, 0.7]
    assert table.to_pydict()["category"] == ["animal", "food", "sports"]
    # ids keep leading zeros (read as text)
    zeros = _write(tmp_path / "z.csv", "image,score\n0001,0.5\n0002,0.25\n")
    assert read_human_scores(zeros).to_pydict()["image"] == ["0001", "0002"]
    named = _write(tmp_path / "n.csv", "img,a,b\nx,0.1,3\ny,0.2,4\n")
    assert read_human_scores(named, id_column="img", score_column="b").to_pydict()["human"] == [3.0, 4.0]
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"filename": ["p.png", "q.png"], "memorability": [0.3, 0.4]}), parquet)
    assert read_human_scores(str(parquet)).to_pydict() == {"image": ["p.png", "q.png"], "human": [0.3, 0.4]}


COUNTS = ("image_name,target_hr,target_far,target_crr,target_hit,target_miss,target_fa,target_cr\n"
          "a.jpg,0.75,0.25,0.5,3,1,1,3\nb.jpg,0.5,0.0,0.5,2,2,0,4\nc.jpg,1.0,0.5,0.5,4,0,2,2\n")


@pytest.mark.parametrize("measure,expected", [
    (None, [0.75, 0.5, 1.0]),
    ("hit_rate", [0.75, 0.5, 1.0]),
    ("false_alarm_rate", [0.25, 0.0, 0.5]),
    ("corrected_recognition", [0.5, 0.5, 0.5]),
    ("crr", [0.5, 0.5, 0.5]),
])
def test_counts_measures(tmp_path, measure, expected):
    path = _write(tmp_path / "set_memorability.csv", COUNTS)
    table = read_human_scores(path, measure=measure)
    assert table.to_pydict()["human"] == pytest.approx(expected)
    assert table.to_pydict()["hit"] == [3, 2, 4]


def test_counts_check_the_published_rates(tmp_path):
    con = duckdb.connect()
    info = load_human(con, _write(tmp_path / "ok.csv", COUNTS))
    assert info.format == "counts"
    assert info.published_check == {"target_hr": 0.0, "target_far": 0.0, "target_crr": 0.0}
    assert not info.warnings
    wrong = COUNTS.replace("a.jpg,0.75", "a.jpg,0.70")
    info = load_human(duckdb.connect(), _write(tmp_path / "bad.csv", wrong))
    assert any("target_hr differs" in w for w in info.warnings)
    # a ready column of a count table
    table = read_human_scores(str(tmp_path / "ok.csv"), score_column="target_crr")
    assert table.to_pydict()["human"] == [0.5, 0.5, 0.5]


def _trials(tmp_path, with_presentation: bool) -> str:
    """p1..p3 good; p4 says 'old' to everything (filler FA 1.0); p5 misses all vigilance repeats."""
    rows = []
    for p in ("p1", "p2", "p3", "p4", "p5"):
        t = 0
        for img, first, second in (("a.jpg", 0, 1), ("b.jpg", 0, 0), ("c.jpg", 1, 1)):
            rows.append((p, img, "target", 1, 1 if p == "p4" else first, t))
            rows.append((p, img, "target", 2, 1 if p == "p4" else (1 - second if p == "p5" else second), t + 5))
            t += 1
        for k in range(4):
            rows.append((p, f"f{k}.jpg", "filler", 1, 1 if p == "p4" else 0, 20 + k))
        rows.append((p, "v.jpg", "vigilance", 1, 1 if p == "p4" else 0, 30))
        rows.append((p, "v.jpg", "vigilance", 2, 0 if p == "p5" else 1, 31))
    order = sorted(rows, key=lambda r: (r[0], r[5]))
    header = "participant_id,image_id,trial_type," + ("presentation," if with_presentation else "") + "response,trial\n"
    lines = [f"{r[0]},{r[1]},{r[2]},{str(r[3]) + ',' if with_presentation else ''}"
             f"{'true' if r[4] else 'false'},{r[5]}" for r in order]
    return _write(tmp_path / "trials.csv", header + "\n".join(lines) + "\n")


@pytest.mark.parametrize("with_presentation", [True, False])
def test_trials_exclusion_and_measures(tmp_path, with_presentation):
    path = _trials(tmp_path, with_presentation)
    con = duckdb.connect()
    info = load_human(con, path, measure="hit_rate")
    assert info.format == "trials" and info.has_trials
    assert info.participants["total"] == 5 and info.participants["excluded"] == 2
    assert info.participants["excluded_ids"] == ["p4", "p5"]
    assert any("excluded 2 of 5" in w for w in info.warnings)
    human = dict(con.sql("SELECT image, human FROM human").fetchall())
    assert human == {"a.jpg": 1.0, "b.jpg": 0.0, "c.jpg": 1.0}  # p1..p3 only
    fa = read_human_scores(path, format="trials", measure="false_alarm_rate")
    assert dict(zip(fa["image"].to_pylist(), fa["human"].to_pylist())) == {"a.jpg": 0.0, "b.jpg": 0.0, "c.jpg": 1.0}
    # rules can be turned off: everyone is kept
    con = duckdb.connect()
    info = load_human(con, path, exclusion=Exclusion(None, None))
    assert info.participants["excluded"] == 0
    assert con.sql("SELECT count(DISTINCT participant) FROM trial_counts").fetchall()[0][0] == 5


def test_bids_layout(tmp_path):
    root = tmp_path / "sub-project" / "bids"
    root.mkdir(parents=True)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t31\nsub-03\t40\n")
    for sub, responses in (("sub-01", (0, 1, 0, 1)), ("sub-02", (0, 0, 1, 1))):
        beh = root / sub / "beh"
        beh.mkdir(parents=True)
        lines = ["onset\tstim_file\ttrial_type\tresponse"]
        for i, (stim, resp) in enumerate(zip(("stimuli/a.jpg", "stimuli/b.jpg", "stimuli/a.jpg", "stimuli/b.jpg"), responses)):
            lines.append(f"{i * 2.0}\t{stim}\ttarget\t{resp}")
        (beh / f"{sub}_task-memory_beh.tsv").write_text("\n".join(lines) + "\n")
    con = duckdb.connect()
    info = load_human(con, str(root))
    assert info.format == "bids"
    assert info.participants["total"] == 2
    assert any("participants.tsv" in w for w in info.warnings)  # sub-03 has no trials
    assert dict(con.sql("SELECT image, human FROM human").fetchall()) == {"stimuli/a.jpg": 0.5, "stimuli/b.jpg": 1.0}


def test_malformed_input_gives_one_line_errors(tmp_path):
    with pytest.raises(HumanDataError, match="not found"):
        read_human_scores(str(tmp_path / "missing.csv"))
    dup = _write(tmp_path / "dup.csv", "image,score\na.jpg,0.1\na.jpg,0.2\nb.jpg,0.3\n")
    with pytest.raises(HumanDataError, match="1 image id\\(s\\) appear more than once"):
        read_human_scores(dup)
    nocol = _write(tmp_path / "nocol.csv", "foo,bar\nx,y\n")
    with pytest.raises(HumanDataError, match="no image id column"):
        read_human_scores(nocol)
    with pytest.raises(HumanDataError, match="no column 'nope'"):
        read_human_scores(_write(tmp_path / "s.csv", "image,score\na,1\n"), score_column="nope")
    with pytest.raises(HumanDataError, match="unknown human measure"):
        read_human_scores(_write(tmp_path / "c.csv", COUNTS), measure="dprime2")
    with pytest.raises(HumanDataError, match="needs counts or trials"):
        read_human_scores(_write(tmp_path / "l.csv", "image,score\na,0.5\n"), measure="hit_rate")
    for error in (HumanDataError("x"),):
        assert "\n" not in str(error)


def test_nan_and_out_of_range_scores_are_warned_with_counts(tmp_path):
    path = _write(tmp_path / "nan.csv", "image,score\na,0.5\nb,NaN\nc,\nd,abc\ne,1.5\n")
    con = duckdb.connect()
    info = load_human(con, path)
    assert info.images == 2
    assert any("dropped 3 row(s)" in w for w in info.warnings)
    assert any("1 score(s) outside [0, 1]" in w for w in info.warnings)


@pytest.mark.parametrize("mode,expected", [
    ("path", "photos/cats/img.01.JPG"),
    ("name", "img.01.JPG"),
    ("stem", "img.01"),
])
def test_match_keys(mode, expected):
    con = duckdb.connect()
    for raw in ("photos/cats/img.01.JPG", "./photos/cats/img.01.JPG", "photos\\cats\\img.01.JPG"):
        assert con.sql(f"SELECT {key_sql(lit(raw), mode)}").fetchall()[0][0] == expected


def test_read_human_scores_signature_for_training(tmp_path):
    """Issue 6 calls exactly this signature."""
    path = _write(tmp_path / "m.csv", COUNTS)
    table = read_human_scores(path, format="auto", id_column="image_name", score_column=None, measure="hit_rate")
    assert {"image", "human"} <= set(table.column_names)
    assert np.allclose(table["human"].to_numpy(), [0.75, 0.5, 1.0])


def test_duplicates_can_be_averaged(tmp_path):
    path = _write(tmp_path / "dup.csv", "image,score,set\na.jpg,0.1,x\na.jpg,0.3,y\nb.jpg,0.5,z\n")
    table = read_human_scores(path, duplicates="mean")
    assert table.to_pydict() == {"image": ["a.jpg", "b.jpg"], "human": pytest.approx([0.2, 0.5]), "set": ["x", "z"]}
    con = duckdb.connect()
    info = load_human(con, path, duplicates="mean")
    assert any("1 image id(s) had several rows (2 rows)" in w for w in info.warnings)


def test_memcat_columns(tmp_path):
    """MemCat's CSV: a pandas index column, image_file, categories, two memorability columns."""
    path = _write(tmp_path / "memcat_image_data.csv",
                  ",image_file,category,subcategory,memorability_w_fa_correction,memorability_wo_fa_correction\n"
                  "0,a.jpg,animal,cat,0.61,0.70\n1,b.jpg,food,cake,0.55,0.66\n")
    table = read_human_scores(path)
    assert table.to_pydict()["human"] == [0.61, 0.55]
    assert table.to_pydict()["category"] == ["animal", "food"]


def test_a_csv_saved_as_windows_1252_says_it_is_not_utf8(tmp_path, capsys):
    """Excel's plain CSV in many locales is Windows-1252: DuckDB stops at the first non-UTF-8
    byte; the one line says which byte (found here with Python's own codec) and what to do."""
    from memscore.flows.cli import main

    text = "image_name,score\ncafé.jpg,0.5\nb.jpg,0.3\nc.jpg,0.2\n"
    legacy = tmp_path / "legacy.csv"
    legacy.write_bytes(text.encode("cp1252"))
    utf8 = tmp_path / "utf8.csv"
    utf8.write_text(text, encoding="utf-8")
    offset = text.encode("cp1252").index("é".encode("cp1252"))
    for scores, human in ((legacy, utf8), (utf8, legacy)):
        assert main(["analyze", "--scores", str(scores), "--human", str(human), "--human-column", "score"]) == 1
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert line.startswith("memscore: error: ") and "not UTF-8" in line
        assert f"byte 0xe9 at offset {offset}" in line and "CSV UTF-8" in line
    assert main(["analyze", "--scores", str(utf8), "--human", str(utf8), "--human-column", "score"]) == 0
