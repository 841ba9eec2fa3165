"""storage.human on trial data and lists that used to be misread in silence: the order of
showings, empty and unknown responses, constant measures, whitespace-separated lists,
and what the reader states about its assumptions. Expected values are hand counts."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from memscore.storage.human import HumanDataError, load_human, read_human_scores


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _trial_rows(seed: int = 0, participants: int = 6, images: int = 8):
    """(participant, image, showing, response) with a clear memory effect: repeats are
    mostly recognised (yes), first showings mostly not; hand-countable per image."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(participants):
        t = 0
        for i in range(images):
            rows.append((f"p{p}", f"im{i}.jpg", 1, int(rng.random() < 0.1), t))
            rows.append((f"p{p}", f"im{i}.jpg", 2, int(rng.random() < 0.3 + 0.08 * i), t + 5))
            t += 1
    rows.sort(key=lambda r: (r[0], r[4], r[2]))
    return rows


def _expected_hit_rates(rows) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for p, image, showing, response, _ in rows:
        if showing == 2:
            out.setdefault(image, []).append(response)
    return {k: sum(v) / len(v) for k, v in out.items()}


def _csv(rows, columns=("participant_id", "image_id", "trial_type", "timestamp", "response"), reverse=False,
         response=lambda r: str(r[3])) -> str:
    body = []
    for p, image, showing, resp, t in (reversed(rows) if reverse else rows):
        values = {"participant_id": p, "image_id": image, "trial_type": "target",
                  "timestamp": f"2026-01-01 10:{t // 60:02d}:{t % 60:02d}", "presentation": str(showing),
                  "response": response((p, image, showing, resp, t)), "onset": str(t * 2.5)}
        body.append(",".join(values[c] for c in columns))
    return ",".join(columns) + "\n" + "\n".join(body) + "\n"


def test_a_time_column_orders_the_showings_even_when_the_file_is_latest_first(tmp_path):
    rows = _trial_rows()
    expected = _expected_hit_rates(rows)
    path = _write(tmp_path / "t.csv", _csv(rows, reverse=True))  # latest first
    con = duckdb.connect()
    info = load_human(con, path, measure="hit_rate")
    assert "timestamp" in info.order_source and "time" in info.order_source
    assert dict(con.sql("SELECT image, human FROM human").fetchall()) == pytest.approx(expected)
    numeric = _write(tmp_path / "o.csv", _csv(rows, ("participant_id", "image_id", "trial_type", "onset", "response"),
                                             reverse=True))
    info = load_human(duckdb.connect(), numeric)
    assert "onset" in info.order_source and "trial number" in info.order_source


def test_file_order_is_stated_and_refused_when_the_rows_are_out_of_order(tmp_path):
    rows = _trial_rows()
    cols = ("participant_id", "image_id", "trial_type", "response")
    in_order = _write(tmp_path / "in.csv", _csv(rows, cols))
    con = duckdb.connect()
    info = load_human(con, in_order)
    assert info.order_source.startswith("file order")
    assert dict(con.sql("SELECT image, human FROM human").fetchall()) == pytest.approx(_expected_hit_rates(rows))
    reversed_file = _write(tmp_path / "rev.csv", _csv(rows, cols, reverse=True))
    with pytest.raises(HumanDataError, match="rows look out of order") as error:
        load_human(duckdb.connect(), reversed_file)
    assert "\n" not in str(error.value) and "presentation column" in str(error.value)


def test_empty_responses_can_mean_no_and_mostly_empty_data_stops(tmp_path):
    rows = _trial_rows(seed=2)
    cols = ("participant_id", "image_id", "trial_type", "presentation", "response")
    empty_for_no = _write(tmp_path / "e.csv", _csv(rows, cols, response=lambda r: "1" if r[3] else ""))
    # every 'no' is empty: dropping them leaves only 'yes' (all hit rates 1.0): refused, not reported
    with pytest.raises(HumanDataError, match="empty-response no|every image"):
        load_human(duckdb.connect(), empty_for_no)
    con = duckdb.connect()
    info = load_human(con, empty_for_no, empty_response="no")
    assert "empty = no" in info.response_coding
    assert dict(con.sql("SELECT image, human FROM human").fetchall()) == pytest.approx(_expected_hit_rates(rows))
    mostly = _write(tmp_path / "m.csv", _csv(rows, cols, response=lambda r: "1" if r[3] and r[2] == 2 else ""))
    with pytest.raises(HumanDataError, match=r"have an empty response, most of the data"):
        load_human(duckdb.connect(), mostly)


def test_unrecognised_responses_name_the_column_and_the_values(tmp_path):
    rows = _trial_rows()
    cols = ("participant_id", "image_id", "trial_type", "presentation", "response")
    keys = _write(tmp_path / "k.csv", _csv(rows, cols, response=lambda r: "space" if r[3] else "0"))
    with pytest.raises(HumanDataError) as error:
        load_human(duckdb.connect(), keys)
    message = str(error.value)
    assert "response column 'response'" in message and "'space'" in message and "trial_type" not in message


def test_response_coding_is_stated(tmp_path):
    rows = _trial_rows()
    cols = ("participant_id", "image_id", "trial_type", "presentation", "response")
    info = load_human(duckdb.connect(), _write(tmp_path / "y.csv", _csv(rows, cols, response=lambda r: "yes" if r[3] else "no")))
    assert info.response_coding.startswith("column 'response': yes = ") and "empty = missing" in info.response_coding
    assert info.order_source.startswith("column 'presentation'")


def test_lamem_lists_separated_by_tabs_or_several_spaces(tmp_path):
    for sep in ("\t", "   ", " \t "):
        path = _write(tmp_path / "split.txt", f"a.jpg{sep}0.75\nb.jpg{sep}0.5\n  c.jpg{sep}0.25  \n")
        table = read_human_scores(path)
        assert dict(zip(table["image"].to_pylist(), table["human"].to_pylist())) == {"a.jpg": 0.75, "b.jpg": 0.5,
                                                                                     "c.jpg": 0.25}
    with pytest.raises(HumanDataError, match="one field"):
        read_human_scores(_write(tmp_path / "bad.txt", "a.jpg 0.5\nb.jpg\n"), format="lamem")


def test_count_columns_and_observations_are_stated(tmp_path):
    path = _write(tmp_path / "c.csv", "image_name,target_hit,target_miss,target_fa,target_cr,filler_hit,filler_miss,"
                  "filler_fa,filler_cr\na.jpg,3,1,1,4,9,9,9,9\nb.jpg,1,1,0,2,9,9,9,9\nc.jpg,2,2,2,5,9,9,9,9\n")
    con = duckdb.connect()
    info = load_human(con, path, measure="corrected_recognition")
    assert info.count_columns == {"hit": "target_hit", "miss": "target_miss", "fa": "target_fa", "cr": "target_cr"}
    # observations = min(hits + misses, false alarms + correct rejections), by hand
    assert dict(con.sql("SELECT image, observations FROM human").fetchall()) == {"a.jpg": 4, "b.jpg": 2, "c.jpg": 4}


@pytest.mark.parametrize("missing", ["", "n/a", "null", "NaN"])
def test_a_trial_without_an_order_value_is_never_sorted_last_in_silence(tmp_path, missing):
    rows = _trial_rows()
    cols = ("participant_id", "image_id", "trial_type", "onset", "response")
    lines = _csv(rows, cols).splitlines()
    # the FIRST showing of im3 to p0 loses its onset: sorted last, it would become the repeat
    at = next(k for k, line in enumerate(lines) if line.startswith("p0,im3.jpg,"))
    p, image, kind, _, response = lines[at].split(",")
    lines[at] = ",".join((p, image, kind, missing, response))
    ambiguous = _write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    with pytest.raises(HumanDataError) as error:
        load_human(duckdb.connect(), ambiguous)
    message = str(error.value)
    assert "\n" not in message and "'onset'" in message and "1 trial(s)" in message
    assert "p0" in message and "im3.jpg" in message
    # a trial that is the only showing of its image to its participant is a first showing
    # wherever it sorts: kept, counted as a false alarm / correct rejection, and stated
    solo = _write(tmp_path / "s.csv", _csv(rows, cols) + f"p0,solo.jpg,target,{missing},1\n")
    con = duckdb.connect()
    info = load_human(con, solo, measure="false_alarm_rate")
    expected: dict[str, list[int]] = {"solo.jpg": [1]}  # hand count: responses at the first showing
    for _, img, showing, resp, _ in rows:
        if showing == 1:
            expected.setdefault(img, []).append(resp)
    got = dict(con.sql("SELECT image, human FROM human").fetchall())
    assert got == pytest.approx({k: sum(v) / len(v) for k, v in expected.items()})
    assert any("1 trial(s)" in w and "'onset'" in w and "first showing" in w for w in info.warnings)


def test_a_third_showing_counts_as_a_repeat_and_is_said(tmp_path):
    """A target shown three times to one participant: the second and third showings are both
    repeats (hand count), and the warnings say what was assumed."""
    rows = _trial_rows()
    cols = ("participant_id", "image_id", "trial_type", "onset", "response")
    extra = "p0,im2.jpg,target,999,0\n"  # a third showing of im2 to p0, not recognised
    path = _write(tmp_path / "third.csv", _csv(rows, cols) + extra)
    con = duckdb.connect()
    info = load_human(con, path, measure="hit_rate")
    repeats: dict[str, list[int]] = {"im2.jpg": [0]}
    for _, img, showing, resp, _ in rows:
        if showing == 2:
            repeats.setdefault(img, []).append(resp)
    got = dict(con.sql("SELECT image, human FROM human").fetchall())
    assert got == pytest.approx({k: sum(v) / len(v) for k, v in repeats.items()})
    said = [w for w in info.warnings if "more than twice" in w]
    assert len(said) == 1 and "1 participant-image pair(s)" in said[0] and "p0, image im2.jpg" in said[0]
    clean = load_human(duckdb.connect(), _write(tmp_path / "clean.csv", _csv(rows, cols)), measure="hit_rate")
    assert not any("more than twice" in w for w in clean.warnings)
