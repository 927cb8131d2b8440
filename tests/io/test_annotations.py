"""Tests of bids_affect.io.annotations: labels per volume.

The StudyForrest tests compare the vectorised code with a deliberately simple loop
over volumes and events, written here from the rule in docs/labels.md and reading
the files with the csv module, so that the two share no code.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.io.annotations import (
    LabelSpec,
    check_events,
    check_label_spec,
    check_labelled,
    count_labels,
    drop_rare_classes,
    label_volumes,
    labels_from_scores,
    labels_table,
    list_presets,
    load_label_spec,
    presets_markdown,
    read_events,
    score_volumes,
)

REPO = Path(__file__).resolve().parents[2]
STUDYFORREST = Path(__file__).resolve().parents[1] / "data" / "studyforrest-emotions"
STUDYFORREST_TR = 2.0
STUDYFORREST_VOLUMES = {1: 451, 2: 441, 3: 438, 4: 488, 5: 462, 6: 439, 7: 542, 8: 338}
#: Where run 8 starts in the movie, and where the peers' cumulative run lengths put it.
RUN8_MOVIE_OFFSET = 6410.44
RUN8_CUMULATIVE_OFFSET = 6522.0

# The presets as the labels issue states them, written out independently of the JSON files.
STUDYFORREST_5 = {
    "anger": ["anger/rage", "contempt", "hate", "resent"],
    "sadness": ["sadness", "remorse", "disappointment", "shame"],
    "fear": ["fear", "fears_confirmed"],
    "love": ["love", "pity/compassion", "admiration"],
    "happiness": ["happiness", "happy-for", "hope", "relief", "pride", "satisfaction",
                  "gratification", "gratitude"],
}
STUDYFORREST_RAW5 = {"fear": ["fear"], "sadness": ["sadness"], "happiness": ["happiness"],
                     "anger": ["anger/rage"], "love": ["love"]}
EXPECTED_PRESETS = {  # name -> (categories per class, threshold)
    "studyforrest-5": (STUDYFORREST_5, 0.5),
    "studyforrest-raw5": (STUDYFORREST_RAW5, 5 / 9),
}


def studyforrest_file(run: int) -> Path:
    return STUDYFORREST / f"emotions_av_1s_run-{run}_events.tsv"


def columns_spec(classes: dict[str, list[str]], **settings) -> LabelSpec:
    """A columns spec over ``e_<category>`` columns, lag 0 unless given."""
    settings.setdefault("hrf_lag", 0.0)
    members = {name: tuple(f"e_{category}" for category in categories)
               for name, categories in classes.items()}
    return LabelSpec("test", "columns", members, **settings)


def trial_type_spec(classes: dict[str, tuple[str, ...]] | None = None, **settings) -> LabelSpec:
    settings.setdefault("hrf_lag", 0.0)
    return LabelSpec("test", "trial_type", classes or {}, **settings)


def events_frame(rows: list[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def labelled_volumes(labels: np.ndarray) -> list[int]:
    return [volume for volume, label in enumerate(labels) if label is not None]


def write_spec(tmp_path: Path, content: dict | str, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ---------------------------------------------------------------------------------------
# The reference: a plain loop, straight from the rule
# ---------------------------------------------------------------------------------------


def reference_labels(path: Path, classes: dict[str, list[str]], *, threshold: float,
                     overlap: str, tr: float, n_volumes: int, hrf_lag: float,
                     start_time: float = 0.0) -> list:
    with path.open(newline="") as handle:
        events = list(csv.DictReader(handle, delimiter="\t"))
    labels = []
    for volume in range(n_volumes):
        read_time = volume * tr + start_time - hrf_lag
        scores: dict[str, float] = {}
        for event in events:
            onset = float(event["onset"])
            if read_time >= 0 and onset <= read_time < onset + float(event["duration"]):
                for name, categories in classes.items():
                    score = max(float(event[f"e_{category}"]) for category in categories)
                    scores[name] = max(scores.get(name, 0.0), score)
        candidates = {name: score for name, score in scores.items()
                      if score >= threshold - 1e-6}
        label = None
        if overlap == "exclude" and len(candidates) == 1:
            label = next(iter(candidates))
        if overlap == "max" and candidates:
            top = max(candidates.values())
            winners = [name for name, score in candidates.items() if score >= top - 1e-6]
            label = winners[0] if len(winners) == 1 else None
        labels.append(label)
    return labels


@pytest.mark.parametrize("hrf_lag, start_time", [(4.0, 0.0), (5.0, 0.5), (3.3, 0.72),
                                                  (6.0, -1.0)])
@pytest.mark.parametrize("overlap", ["max", "exclude"])
@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_studyforrest_labels_match_a_plain_loop(preset, overlap, hrf_lag, start_time):
    categories, threshold = EXPECTED_PRESETS[preset]
    spec = replace(load_label_spec(preset, hrf_lag=hrf_lag), overlap=overlap)
    n_labelled = 0
    for run, n_volumes in STUDYFORREST_VOLUMES.items():
        labels = label_volumes(read_events(studyforrest_file(run)), spec, tr=STUDYFORREST_TR,
                               n_volumes=n_volumes, start_time=start_time)
        expected = reference_labels(studyforrest_file(run), categories, threshold=threshold,
                                    overlap=overlap, tr=STUDYFORREST_TR,
                                    n_volumes=n_volumes, hrf_lag=hrf_lag,
                                    start_time=start_time)
        wrong = [(volume, got, want) for volume, (got, want)
                 in enumerate(zip(labels.tolist(), expected, strict=True)) if got != want]
        assert not wrong, f"run {run}: (volume, got, expected) {wrong[:10]}"
        n_labelled += sum(label is not None for label in expected)
    assert n_labelled > 800  # the comparison is not between two empty label sets


def test_studyforrest_overlap_rules_disagree_where_candidates_compete():
    # Guards the test above: on the real files the two overlap rules give different labels.
    spec = load_label_spec("studyforrest-5")
    events = read_events(studyforrest_file(7))
    scores = score_volumes(events, spec, tr=STUDYFORREST_TR, n_volumes=STUDYFORREST_VOLUMES[7])
    by_max = labels_from_scores(scores, spec)
    by_exclude = labels_from_scores(scores, replace(spec, overlap="exclude"))
    differ = by_max != by_exclude
    assert differ.sum() > 0
    assert all(label is None for label in by_exclude[differ])


def test_run8_is_read_at_its_own_onsets_not_at_cumulative_run_lengths():
    assert STUDYFORREST_TR * sum(STUDYFORREST_VOLUMES[run] for run in range(1, 8)) \
        == RUN8_CUMULATIVE_OFFSET
    events = read_events(studyforrest_file(8))
    spec = load_label_spec("studyforrest-5")
    labels = label_volumes(events, spec, tr=STUDYFORREST_TR, n_volumes=STUDYFORREST_VOLUMES[8])
    # Line 99 of run 8: onset 543.56 s, 12 s, e_happiness 0.556, alone on screen. With the
    # 4 s lag, volumes 274..279 (read at 544..554 s) carry it; 273 and 280 read nothing.
    line_99 = events.iloc[97]
    assert (line_99.onset, line_99.duration, line_99["e_happiness"]) == pytest.approx(
        (543.56, 12.0, 0.555555555556))
    assert labels[274:280].tolist() == ["happiness"] * 6
    assert labels[273] is None and labels[280] is None

    # The same annotations on the movie's clock: run 8 starting at its true offset gives the
    # same labels; starting at the sum of the earlier runs' lengths (the peers' bug) does not.
    movie_events = events.assign(onset=events.onset + RUN8_MOVIE_OFFSET)
    at_true_offset = label_volumes(movie_events, spec, tr=STUDYFORREST_TR,
                                   n_volumes=STUDYFORREST_VOLUMES[8],
                                   start_time=RUN8_MOVIE_OFFSET)
    at_cumulative_offset = label_volumes(movie_events, spec, tr=STUDYFORREST_TR,
                                         n_volumes=STUDYFORREST_VOLUMES[8],
                                         start_time=RUN8_CUMULATIVE_OFFSET)
    assert at_true_offset.tolist() == labels.tolist()
    assert "happiness" not in at_cumulative_offset[274:280].tolist()
    # 111.56 s too late: the happiness scene shows up about 56 volumes early.
    assert at_cumulative_offset[218:224].tolist() == ["happiness"] * 6


# ---------------------------------------------------------------------------------------
# Presets and specs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_studyforrest_presets_hold_the_stated_mapping(preset):
    categories, threshold = EXPECTED_PRESETS[preset]
    spec = load_label_spec(preset)
    assert spec.source == "columns"
    assert {name: list(members) for name, members in spec.classes.items()} == {
        name: [f"e_{category}" for category in members]
        for name, members in categories.items()}
    assert spec.threshold == pytest.approx(threshold, abs=1e-12)
    assert (spec.overlap, spec.hrf_lag, spec.min_volumes) == ("max", 4.0, 20)


def test_studyforrest_5_drops_only_gloating():
    columns = {column for column in read_events(studyforrest_file(1)).columns
               if column.startswith("e_")}
    assert len(columns) == 22
    assert columns - set(load_label_spec("studyforrest-5").columns) == {"e_gloating"}


def test_presets_are_listed_with_descriptions_and_named_after_their_files():
    presets = list_presets()
    assert set(presets) == {"studyforrest-5", "studyforrest-raw5", "trial-type"}
    for name, description in presets.items():
        assert load_label_spec(name).name == name
        assert description


def test_trial_type_preset_is_the_identity():
    spec = load_label_spec("trial-type")
    assert (spec.source, dict(spec.classes), spec.hrf_lag) == ("trial_type", {}, 4.0)


def test_schema_defaults_are_the_dataclass_defaults():
    schema = json.loads((REPO / "bids_affect" / "data" / "labels" / "schema.json").read_text())
    for spec_field in fields(LabelSpec):
        if spec_field.name in ("name", "source"):
            continue
        default = (spec_field.default_factory() if spec_field.name == "classes"
                   else spec_field.default)
        assert schema["properties"][spec_field.name]["default"] == default, spec_field.name


def test_spec_round_trips_through_json(tmp_path):
    spec = load_label_spec("studyforrest-5", hrf_lag=5.5, min_volumes=7)
    path = write_spec(tmp_path, spec.to_dict())
    assert load_label_spec(path) == spec
    assert load_label_spec(str(path)) == spec


def test_spec_pickles_and_hashes():
    spec = load_label_spec("studyforrest-5")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(load_label_spec("studyforrest-5"))
    assert spec != replace(spec, threshold=0.6)


def test_spec_file_without_name_takes_the_file_name(tmp_path):
    path = write_spec(tmp_path, {"source": "trial_type"}, name="my-events.json")
    assert load_label_spec(path).name == "my-events"


def test_overrides_replace_the_spec_values():
    spec = load_label_spec("studyforrest-raw5", hrf_lag=6, min_volumes=0)
    assert (spec.hrf_lag, spec.min_volumes) == (6.0, 0)
    assert load_label_spec("studyforrest-raw5", hrf_lag=None).hrf_lag == 4.0


@pytest.mark.parametrize(("option", "value"), [("hrf_lag", -1.0), ("min_volumes", 2.5)])
def test_bad_override_is_a_usage_error(option, value):
    with pytest.raises(UsageError, match=option.replace("_", "-")) as error:
        load_label_spec("studyforrest-5", **{option: value})
    assert error.value.exit_code == 64


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UsageError) as error:
        load_label_spec("studyforrest-6")
    assert "studyforrest-6" in str(error.value)
    assert all(name in str(error.value) for name in list_presets())


def test_missing_spec_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="studyforrest-5") as error:
        load_label_spec(tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in str(error.value)


GOOD_SPEC = {"source": "columns", "classes": {"fear": ["e_fear"], "joy": ["e_joy"]}}


@pytest.mark.parametrize(("change", "field_named"), [
    ({"thresold": 0.5}, "thresold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": 0}, "threshold"),
    ({"threshold": "half"}, "threshold"),
    ({"overlap": "min"}, "overlap"),
    ({"source": "columnz"}, "source"),
    ({"hrf_lag": -2}, "hrf_lag"),
    ({"min_volumes": 2.5}, "min_volumes"),
    ({"classes": {}}, "classes"),
    ({"classes": {"fear": "e_fear"}}, "classes.fear"),
    ({"classes": {"fear": []}}, "classes.fear"),
    ({"classes": {"fear": ["e_fear", 3]}}, "classes.fear[1]"),
    ({"classes": {"fear/anger": ["e_fear"]}}, "classes"),
    ({"classes": {"fear": ["e_fear"], "scared": ["e_fear"]}}, "classes"),
    ({"name": ""}, "name"),
])
def test_malformed_spec_names_the_file_and_the_field(tmp_path, change, field_named):
    path = write_spec(tmp_path, {**GOOD_SPEC, **change})
    with pytest.raises(UsageError) as error:
        load_label_spec(path)
    assert error.value.exit_code == 64
    message = str(error.value)
    assert message.startswith(str(path))
    assert f"'{field_named}'" in message


def test_columns_spec_needs_classes(tmp_path):
    path = write_spec(tmp_path, {"source": "columns"})
    with pytest.raises(UsageError, match="'classes' is a required property"):
        load_label_spec(path)


@pytest.mark.parametrize("content", ['{"source": "columns",}', "[1, 2]", "\x00\x81"])
def test_spec_that_is_not_a_json_object_is_a_usage_error(tmp_path, content):
    path = write_spec(tmp_path, content)
    with pytest.raises(UsageError) as error:
        load_label_spec(path)
    assert str(path) in str(error.value)


def test_spec_built_in_code_is_validated_too():
    with pytest.raises(UsageError, match="'overlap'"):
        LabelSpec("mine", "columns", {"fear": ("e_fear",)}, overlap="first")
    with pytest.raises(UsageError, match="'classes.fear'"):
        LabelSpec("mine", "columns", {"fear": "e_fear"})
    check_label_spec({"source": "trial_type", "classes": {"calm": ["rest", "neutral"]}})


def test_spec_does_not_share_the_callers_classes():
    classes = {"fear": ["e_fear"]}
    spec = LabelSpec("mine", "columns", classes)
    classes["fear"].append("e_anger")
    assert spec.classes == {"fear": ("e_fear",)}


def test_docs_list_the_presets_as_generated():
    docs = (REPO / "docs" / "labels.md").read_text()
    assert presets_markdown() in docs
    assert "onset <= t < onset + duration" in docs
    assert "t_i = i * TR + StartTime" in docs


# ---------------------------------------------------------------------------------------
# Events files
# ---------------------------------------------------------------------------------------


def test_read_events_keeps_trial_types_as_text_and_na_as_missing(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\ttrial_type\te_fear\n0\t2\tNA\t0.5\n2\tn/a\tn/a\tn/a\n"
                    "4\t2\t1\t\n")
    events = read_events(path)
    assert events.trial_type.tolist()[::2] == ["NA", "1"]
    assert events.trial_type.isna().tolist() == [False, True, False]
    assert events.e_fear.isna().tolist() == [False, True, True]


@pytest.mark.parametrize(("content", "words"), [
    ("start\tduration\n0\t1\n", "no column onset"),
    ("onset\tduration\n0\t1\nsoon\t1\n", "onset holds invalid values on lines 3"),
    ("onset\tduration\n0\t1\nn/a\t1\n", "onset holds invalid values on lines 3"),
    ("onset\tduration\n0\t1\n2\t-1\n4\t-3\n", "duration holds invalid values on lines 3, 4"),
    ("", "not a readable TSV"),
])
def test_bad_events_file_is_input_data_error_naming_the_file(tmp_path, content, words):
    path = tmp_path / "sub-01_events.tsv"
    path.write_text(content)
    with pytest.raises(InputDataError, match=words) as error:
        read_events(path)
    assert error.value.exit_code == 65
    assert str(error.value).startswith(str(path))


def test_missing_events_file(tmp_path):
    with pytest.raises(InputMissingError):
        read_events(tmp_path / "absent_events.tsv")


def test_spec_naming_a_missing_column_is_a_usage_error():
    path = studyforrest_file(1)
    spec = columns_spec({"fear": ["fear"], "joy": ["joy", "glee"]})
    with pytest.raises(UsageError) as error:
        label_volumes(read_events(path), spec, tr=2.0, n_volumes=10, path=path)
    assert error.value.exit_code == 64
    message = str(error.value)
    assert message.startswith(str(path))
    assert "e_joy, e_glee" in message
    assert "columns found: onset, duration, character" in message


def test_trial_type_spec_needs_a_trial_type_column():
    events = events_frame([(0.0, 2.0, 0.6)], ("onset", "duration", "e_fear"))
    with pytest.raises(UsageError, match="trial_type"):
        check_events(trial_type_spec(), events, Path("events.tsv"))


def test_agreement_columns_must_be_numbers():
    events = events_frame([(0.0, 2.0, 0.6), (2.0, 2.0, "high")], ("onset", "duration",
                                                                    "e_fear"))
    with pytest.raises(InputDataError, match="e_fear .* lines 3"):
        check_events(columns_spec({"fear": ["fear"]}), events, Path("events.tsv"))


# ---------------------------------------------------------------------------------------
# The rule, on small synthetic runs
# ---------------------------------------------------------------------------------------

SCENE = events_frame([(10.0, 6.0, "fear")], ("onset", "duration", "trial_type"))


@pytest.mark.parametrize(("hrf_lag", "expected"), [
    (0.0, [5, 6, 7]),   # acquired at 10, 12, 14 s
    (4.0, [7, 8, 9]),   # acquired at 14, 16, 18 s, read at 10, 12, 14 s
    (5.0, [8, 9, 10]),  # read at 11, 13, 15 s
    (6.5, [9, 10, 11]),  # read at 11.5, 13.5, 15.5 s
])
def test_hrf_lag_reads_each_volume_lag_seconds_earlier(hrf_lag, expected):
    labels = label_volumes(SCENE, trial_type_spec(hrf_lag=hrf_lag), tr=2.0, n_volumes=15)
    assert labelled_volumes(labels) == expected


def test_start_time_shifts_acquisition_times():
    # StartTime 1.5 s: volumes acquired at 1.5, 3.5, ... s; 5 is read at 11.5 s, 7 at 15.5 s.
    labels = label_volumes(SCENE, trial_type_spec(), tr=2.0, n_volumes=15, start_time=1.5)
    assert labelled_volumes(labels) == [5, 6, 7]
    late = label_volumes(SCENE, trial_type_spec(), tr=2.0, n_volumes=15, start_time=-1.0)
    assert labelled_volumes(late) == [6, 7, 8]


def test_interval_is_closed_at_onset_and_open_at_the_end():
    events = events_frame([(4.0, 4.0, "fear")], ("onset", "duration", "trial_type"))
    labels = label_volumes(events, trial_type_spec(), tr=2.0, n_volumes=6)
    assert labels.tolist() == [None, None, "fear", "fear", None, None]


def test_times_compare_at_microseconds_not_at_float_error():
    # 3 * 0.7 is 2.0999999999999996 in floating point; the event starts at 2.1 s.
    events = events_frame([(2.1, 0.7, "fear")], ("onset", "duration", "trial_type"))
    labels = label_volumes(events, trial_type_spec(), tr=0.7, n_volumes=5)
    assert labels.tolist() == [None, None, None, "fear", None]


def test_negative_onset_is_active_from_the_first_second():
    events = events_frame([(-10.0, 14.0, "fear")], ("onset", "duration", "trial_type"))
    labels = label_volumes(events, trial_type_spec(), tr=2.0, n_volumes=4)
    assert labels.tolist() == ["fear", "fear", None, None]


def test_read_time_before_zero_is_unlabelled_even_under_an_active_scene():
    events = events_frame([(-30.0, 40.0, "fear")], ("onset", "duration", "trial_type"))
    labels = label_volumes(events, trial_type_spec(hrf_lag=4.0), tr=2.0, n_volumes=8)
    assert labels.tolist() == [None, None, "fear", "fear", "fear", "fear", "fear", None]


def test_trial_type_n_a_events_are_ignored(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t6\tfear\n2\t6\tn/a\n")
    labels = label_volumes(read_events(path), trial_type_spec(), tr=2.0, n_volumes=5)
    assert labels.tolist() == ["fear", "fear", "fear", None, None]


def test_two_different_trial_types_leave_the_volume_unlabelled():
    events = events_frame([(0.0, 4.0, "fear"), (2.0, 4.0, "joy"), (2.0, 2.0, "fear")],
                          ("onset", "duration", "trial_type"))
    for overlap in ("max", "exclude"):
        labels = label_volumes(events, trial_type_spec(overlap=overlap), tr=2.0, n_volumes=4)
        assert labels.tolist() == ["fear", None, "joy", None]


def test_same_trial_type_twice_is_not_a_conflict():
    events = events_frame([(0.0, 4.0, "fear"), (2.0, 4.0, "fear")],
                          ("onset", "duration", "trial_type"))
    labels = label_volumes(events, trial_type_spec(), tr=2.0, n_volumes=4)
    assert labels.tolist() == ["fear", "fear", "fear", None]


def test_trial_type_mapping_merges_values_and_ignores_the_others():
    events = events_frame([(0.0, 2.0, "scared"), (2.0, 2.0, "afraid"), (4.0, 2.0, "bored"),
                           (6.0, 2.0, 7)], ("onset", "duration", "trial_type"))
    spec = trial_type_spec({"fear": ("scared", "afraid"), "seven": ("7",)})
    labels = label_volumes(events, spec, tr=2.0, n_volumes=5)
    assert labels.tolist() == ["fear", "fear", None, "seven", None]


def test_identity_trial_type_scores_one_column_per_value():
    events = events_frame([(0.0, 2.0, "joy"), (2.0, 2.0, "fear"), (4.0, 2.0, None)],
                          ("onset", "duration", "trial_type"))
    scores = score_volumes(events, trial_type_spec(), tr=2.0, n_volumes=3)
    assert scores.columns.tolist() == ["fear", "joy"]
    assert scores.fillna(0).to_numpy().tolist() == [[0, 1], [1, 0], [0, 0]]


AGREEMENT = ("onset", "duration", "e_fear", "e_dread", "e_joy")


def test_class_score_is_the_largest_member_over_active_annotations():
    events = events_frame([(0.0, 4.0, 0.2, 0.6, 0.1), (2.0, 4.0, 0.7, 0.0, 0.3),
                           (6.0, 2.0, 0.0, 0.0, 0.0)], AGREEMENT)
    spec = columns_spec({"fear": ["fear", "dread"], "joy": ["joy"]})
    scores = score_volumes(events, spec, tr=2.0, n_volumes=5)
    assert scores["fear"].tolist()[:4] == [0.6, 0.7, 0.7, 0.0]
    assert scores["joy"].tolist()[:4] == [0.1, 0.3, 0.3, 0.0]
    assert scores.iloc[4].isna().all()  # nothing active at 8 s
    assert label_volumes(events, spec, tr=2.0, n_volumes=5).tolist() == [
        "fear", "fear", "fear", None, None]


def test_threshold_is_inclusive_within_1e_6():
    # StudyForrest stores 1/3 as 0.33333333333299997, just below 1/3 in floating point.
    events = events_frame([(0.0, 2.0, 0.33333333333299997, 0.0, 0.0),
                           (2.0, 2.0, 1 / 3 - 2e-6, 0.0, 0.0)], AGREEMENT)
    spec = columns_spec({"fear": ["fear"]}, threshold=1 / 3)
    assert label_volumes(events, spec, tr=2.0, n_volumes=2).tolist() == ["fear", None]


@pytest.mark.parametrize(("fear", "joy", "by_max", "by_exclude"), [
    (0.7, 0.6, "fear", None),          # two candidates: the higher wins, or none
    (0.6, 0.6, None, None),            # a tie
    (0.6, 0.6000004, None, None),      # a tie within 1e-6
    (0.6, 0.6000020, "joy", None),     # not a tie
    (0.7, 0.4, "fear", "fear"),        # one candidate
    (0.4, 0.4, None, None),            # none
])
def test_overlap_rules_on_two_annotations(fear, joy, by_max, by_exclude):
    # Two characters' annotations at once: one reports fear, the other joy.
    events = events_frame([(0.0, 2.0, fear, 0.0, 0.0), (0.0, 2.0, 0.0, 0.0, joy)], AGREEMENT)
    spec = columns_spec({"fear": ["fear"], "joy": ["joy"]}, threshold=0.5)
    for overlap, expected in (("max", by_max), ("exclude", by_exclude)):
        labels = label_volumes(events, replace(spec, overlap=overlap), tr=2.0, n_volumes=1)
        assert labels.tolist() == [expected], overlap


def test_missing_agreement_does_not_score():
    events = events_frame([(0.0, 2.0, np.nan, np.nan, 0.9), (0.0, 2.0, 0.8, 0.0, np.nan)],
                          AGREEMENT)
    spec = columns_spec({"fear": ["fear"], "joy": ["joy"]})
    scores = score_volumes(events, spec, tr=2.0, n_volumes=1)
    assert scores.iloc[0].tolist() == [0.8, 0.9]


def test_vectorised_labels_agree_with_a_loop_on_random_events(rng, tmp_path):
    n_events = 300
    table = pd.DataFrame({
        "onset": np.round(rng.uniform(-20, 600, n_events), 2),
        "duration": rng.integers(0, 30, n_events).astype(float),
        "e_fear": rng.integers(0, 10, n_events) / 9,
        "e_dread": rng.integers(0, 10, n_events) / 9,
        "e_joy": rng.integers(0, 10, n_events) / 9,
    })
    path = tmp_path / "events.tsv"
    table.to_csv(path, sep="\t", index=False)
    classes = {"fear": ["fear", "dread"], "joy": ["joy"]}
    for overlap in ("max", "exclude"):
        spec = columns_spec(classes, threshold=5 / 9, overlap=overlap, hrf_lag=3.0)
        labels = label_volumes(read_events(path), spec, tr=2.0, n_volumes=290)
        expected = reference_labels(path, classes, threshold=5 / 9, overlap=overlap, tr=2.0,
                                    n_volumes=290, hrf_lag=3.0)
        assert labels.tolist() == expected


def test_events_past_the_end_are_named_in_a_warning(caplog, tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t2\tfear\n19.5\t2\tjoy\n20\t2\tjoy\n"
                    "35.25\t2\tfear\n")
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        labels = label_volumes(read_events(path), trial_type_spec(), tr=2.0, n_volumes=10,
                               path=path)
    assert labels[0] == "fear"
    [record] = caplog.records
    assert record.name == "bids_affect.annotations"
    assert str(path) in record.getMessage()
    assert "lines 4 (onset 20 s), 5 (onset 35.25 s)" in record.getMessage()
    assert "line 3" not in record.getMessage()


def test_no_warning_when_events_end_inside_the_run(caplog):
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        label_volumes(SCENE, trial_type_spec(), tr=2.0, n_volumes=15)
    assert not caplog.records


def test_empty_run_and_no_events():
    events = events_frame([], ("onset", "duration", "trial_type"))
    assert label_volumes(events, trial_type_spec(), tr=2.0, n_volumes=3).tolist() == [None] * 3
    assert label_volumes(SCENE, trial_type_spec(), tr=2.0, n_volumes=0).tolist() == []


@pytest.mark.parametrize(("tr", "n_volumes"), [(0.0, 5), (float("nan"), 5), (2.0, -1),
                                               (2.0, 2.5)])
def test_bad_acquisition_parameters(tr, n_volumes):
    with pytest.raises(InputDataError):
        label_volumes(SCENE, trial_type_spec(), tr=tr, n_volumes=n_volumes)


# ---------------------------------------------------------------------------------------
# Tables and checks over runs
# ---------------------------------------------------------------------------------------


def test_labels_table_has_one_row_per_volume():
    labels = np.array([None, "fear", "joy"], dtype=object)
    table = labels_table(labels, tr=0.7, start_time=0.35)
    assert table.columns.tolist() == ["onset", "duration", "trial_type", "volume"]
    assert table.onset.tolist() == [0.35, 1.05, 1.75]
    assert table.duration.tolist() == [0.7] * 3
    assert table.trial_type.tolist() == [None, "fear", "joy"]
    assert table.volume.tolist() == [0, 1, 2]
    written = table.to_csv(sep="\t", index=False, na_rep="n/a")
    assert written.splitlines()[1] == "0.35\t0.7\tn/a\t0"


def test_count_labels_per_run_and_total():
    runs = {"run-1": np.array(["fear", None, "joy", "fear"], dtype=object),
            "run-2": np.array([None, None, "sad"], dtype=object)}
    table = count_labels(runs, ["joy", "fear"])
    assert table.columns.tolist() == ["run", "joy", "fear", "sad", "n/a"]
    assert table.to_dict("records") == [
        {"run": "run-1", "joy": 1, "fear": 2, "sad": 0, "n/a": 1},
        {"run": "run-2", "joy": 0, "fear": 0, "sad": 1, "n/a": 2},
        {"run": "total", "joy": 1, "fear": 2, "sad": 1, "n/a": 3}]


def test_drop_rare_classes_unlabels_them_and_warns(caplog):
    labels = np.array(["fear"] * 20 + ["joy"] * 19 + [None] * 3 + ["sad"], dtype=object)
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        kept, dropped = drop_rare_classes(labels, min_volumes=20)
    assert dropped == {"joy": 19, "sad": 1}
    assert kept.tolist() == ["fear"] * 20 + [None] * 23
    assert labels[20] == "joy"  # the input is left alone
    assert "joy (19 volumes)" in caplog.text and "sad (1 volumes)" in caplog.text


def test_drop_rare_classes_keeps_everything_at_zero(caplog):
    labels = np.array(["fear", None], dtype=object)
    kept, dropped = drop_rare_classes(labels, min_volumes=0)
    assert kept.tolist() == ["fear", None] and dropped == {}
    assert not caplog.records


def test_check_labelled_passes_with_one_labelled_volume():
    check_labelled({"run-1": np.array([None, "fear"], dtype=object)},
                   load_label_spec("studyforrest-5"))


def test_no_labelled_volume_reports_how_far_from_the_threshold():
    events = events_frame([(0.0, 4.0, 0.44, 0.1, 0.0), (4.0, 2.0, 0.0, 0.0, 0.3),
                           (6.0, 2.0, 0.6, 0.0, 0.6)], AGREEMENT)
    spec = columns_spec({"fear": ["fear", "dread"], "joy": ["joy"], "calm": ["calm"]},
                        threshold=0.5)
    events["e_calm"] = 0.0
    scores = {"run-1": score_volumes(events, spec, tr=2.0, n_volumes=5)}
    labels = {run: labels_from_scores(table, spec) for run, table in scores.items()}
    with pytest.raises(InputDataError) as error:
        check_labelled(labels, spec, scores, where="sub-01")
    assert error.value.exit_code == 65
    message = str(error.value)
    assert message.startswith("sub-01: no volume labelled")
    assert "1 run(s), 5 volumes" in message
    assert "fear 3 (max 0.6), joy 2 (max 0.6), calm 0" in message
    assert "1 volume(s) had candidates" in message  # the tie at 6 s


def test_no_labelled_volume_without_scores_still_raises():
    with pytest.raises(InputDataError, match="threshold 0.5"):
        check_labelled({"run-1": np.full(4, None)}, load_label_spec("studyforrest-5"))


# --------------------------------------------------- warnings name the subject, run and file


def test_a_header_only_events_file_is_named_in_a_warning(caplog, tmp_path):
    path = tmp_path / "sub-01_task-movie_run-2_events.tsv"
    path.write_text("onset\tduration\ttrial_type\n")
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        labels = label_volumes(read_events(path), trial_type_spec(), tr=2.0, n_volumes=4,
                               path=path, where="sub-01 task-movie_run-2")
    assert labels.tolist() == [None] * 4
    [record] = caplog.records
    assert record.getMessage().startswith(f"sub-01 task-movie_run-2 ({path}): the events "
                                          "file holds a header but no event")
    assert "none of the run's 4 volumes is labelled" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        label_volumes(read_events(path), trial_type_spec(), tr=2.0, n_volumes=4, path=path)
    assert caplog.records[0].getMessage().startswith(f"{path}: ")  # no run given: the file


def test_events_past_the_end_name_the_subject_and_run(caplog, tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("onset\tduration\ttrial_type\n0\t2\tfear\n30\t2\tjoy\n")
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        score_volumes(read_events(path), trial_type_spec(), tr=2.0, n_volumes=10, path=path,
                      where="sub-07 task-movie_run-3")
    [record] = caplog.records
    assert record.getMessage().startswith(f"sub-07 task-movie_run-3 ({path}): 1 event(s) "
                                          "start after the end of the run")


def test_a_class_with_no_labelled_volume_is_named_with_the_subject(caplog):
    spec = load_label_spec("studyforrest-5")
    labels = {"run-1": np.array(["fear", None, "anger"], dtype=object),
              "run-2": np.array(["fear", "sadness", None], dtype=object)}
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        check_labelled(labels, spec, where="sub-03")
    [record] = caplog.records
    assert record.getMessage() == (
        "sub-03: class(es) with no labelled volume in 2 run(s), left out of the analyses: "
        "love, happiness (label spec 'studyforrest-5')")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        check_labelled({"run-1": np.array(list(spec.classes), dtype=object)}, spec,
                       where="sub-03")
    assert not caplog.records  # every class labels a volume


def test_an_identity_trial_type_class_with_no_labelled_volume_is_named(caplog):
    # joy ended before the run started (a negative onset): no volume reads it.
    events = events_frame([(-8.0, 4.0, "joy"), (0.0, 12.0, "fear")],
                          ("onset", "duration", "trial_type"))
    spec = trial_type_spec(hrf_lag=4.0)
    scores = {"run-1": score_volumes(events, spec, tr=2.0, n_volumes=6)}
    labels = {run: labels_from_scores(table, spec) for run, table in scores.items()}
    assert "joy" not in labels["run-1"].tolist()
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        check_labelled(labels, spec, scores, where="sub-01")
    assert "sub-01: class(es) with no labelled volume in 1 run(s)" in caplog.text
    assert ": joy (label spec 'test')" in caplog.text


def test_rare_classes_warning_names_the_subject(caplog):
    labels = np.array(["fear"] * 20 + ["love"] * 19, dtype=object)
    with caplog.at_level(logging.WARNING, logger="bids_affect.annotations"):
        _, dropped = drop_rare_classes(labels, 20, ["fear", "love", "anger"], where="sub-02")
    assert dropped == {"love": 19, "anger": 0}
    assert caplog.records[0].getMessage() == (
        "sub-02: classes with fewer than 20 labelled volumes are left out: love (19 volumes), "
        "anger (0 volumes)")
