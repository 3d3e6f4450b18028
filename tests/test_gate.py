"""The gate: a regressed model is not published and yesterday's list stays served; the
closing report fails the run, naming the stage, when any stage failed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import fake_model_version, write_fake_model

from crossrec_core.contracts import SCORES, StageStatus
from crossrec_core.gate import decide, evaluate_stage, latest_published
from crossrec_core.lake import Lake, LakeError, MissingPartitionError
from crossrec_core.model_store import ModelFileError
from crossrec_core.pipeline import RunFailed, report_stage
from crossrec_core.publish import publish_stage
from crossrec_core.reports import read_run_reports, stage_run
from crossrec_core.serving import latest_served
from crossrec_core.stages import STAGES


@pytest.fixture
def gate_settings(settings):
    return settings.model_copy(update={"gate": settings.gate.model_copy(update={"tolerance": 0.05})})


def night(lake: Lake, settings, ds: str, ndcg: float | None, users: int = 4, k: int = 3) -> None:
    """What train and score leave for ``ds``: a model card, the candidate pointer and the scores partition."""
    write_fake_model(lake, ds, {"metrics": None if ndcg is None else {"all": {"ndcg@10": ndcg}}})
    n = users * k
    scores = pa.table(
        {
            "user_id": np.repeat([f"u{i}" for i in range(users)], k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), users),
            "item_id": [f"t{i}" for i in range(n)],
            "score": np.linspace(1, 0, n, dtype=np.float32),
            "model_version": [fake_model_version(ds)] * n,
            "segment": ["warm"] * n,
            "because": [[]] * n,
        }
    )
    lake.write_parquet_partition(SCORES, SCORES.validate(scores), ds=ds, domain=settings.target)


def evaluate_and_publish(lake, settings, ds, ndcg):
    night(lake, settings, ds, ndcg)
    return evaluate_stage(settings, ds), publish_stage(settings, ds)


def upstream_succeeded(lake, settings, ds, stages=("clean", "featurize", "train")):
    """run_reports rows of the stages before the gate (score is done by ``night``'s files)."""
    for stage in stages:
        for domain in settings.domains.all if STAGES[stage].per_domain else ("all",):
            with stage_run(lake, stage, ds, domain=domain):
                pass


@pytest.mark.parametrize(
    ("new", "served", "publish"),
    [(0.20, None, True), (0.19, 0.20, True), (0.189, 0.20, False), (0.25, 0.20, True), (None, 0.20, True)],
)
def test_decide_blocks_only_a_drop_beyond_the_tolerance(new, served, publish):
    allowed, reason = decide(new, served, tolerance=0.05)
    assert allowed is publish
    assert reason


def test_a_regressed_model_is_gated_and_the_last_good_list_stays_served(lake, gate_settings):
    first, first_publish = evaluate_and_publish(lake, gate_settings, "2026-01-01", 0.20)
    assert first.status == StageStatus.SUCCESS and first.metrics["published_version"] is None
    assert first_publish.status == StageStatus.SUCCESS

    gated, gated_publish = evaluate_and_publish(lake, gate_settings, "2026-01-02", 0.15)
    decision = json.loads((lake.root / fake_model_version("2026-01-02") / "gate.json").read_text())
    assert gated.status == StageStatus.GATED and decision["publish"] is False
    assert decision["published_version"] == fake_model_version("2026-01-01") and "0.1500" in decision["reason"]
    assert gated_publish.status == StageStatus.GATED
    assert latest_served(lake, gate_settings.target) == {"ds": "2026-01-01", "model_version": fake_model_version("2026-01-01")}

    # compared with what serves (01-01, 0.20), not with the rejected night (0.15)
    within, within_publish = evaluate_and_publish(lake, gate_settings, "2026-01-03", 0.195)
    assert within.status == StageStatus.SUCCESS and within.metrics["published_ndcg@10"] == 0.20
    assert within_publish.status == StageStatus.SUCCESS
    assert latest_published(lake, gate_settings.target)["model_version"] == fake_model_version("2026-01-03")

    reports = {r["stage"]: r for r in read_run_reports(lake, "2026-01-02").to_pylist()}
    assert reports["evaluate"]["status"] == "gated" and "below" in json.loads(reports["evaluate"]["metrics"])["reason"]


def test_a_rerun_of_the_same_night_compares_with_the_night_before(lake, gate_settings):
    evaluate_and_publish(lake, gate_settings, "2026-01-01", 0.20)
    evaluate_and_publish(lake, gate_settings, "2026-01-02", 0.21)
    rerun = evaluate_stage(gate_settings, "2026-01-02")
    assert rerun.status == StageStatus.SUCCESS and rerun.metrics["published_version"] == fake_model_version("2026-01-01")


def test_evaluate_without_a_model_names_the_missing_file(lake, gate_settings):
    with pytest.raises(
        MissingPartitionError, match=r"no model trained for ds=2026-01-01: .*models/ds=2026-01-01/candidate\.json does not exist"
    ):
        evaluate_stage(gate_settings, "2026-01-01")
    night(lake, gate_settings, "2026-01-01", 0.2)
    (lake.root / fake_model_version("2026-01-01") / "model_card.json").unlink()
    with pytest.raises(ModelFileError, match=r"models/ds=2026-01-01/model=202601010000/model_card\.json does not exist"):
        evaluate_stage(gate_settings, "2026-01-01")


def test_publish_refuses_scores_of_another_model_than_the_gated_one(lake, gate_settings):
    night(lake, gate_settings, "2026-01-01", 0.2)
    evaluate_stage(gate_settings, "2026-01-01")
    write_fake_model(lake, "2026-01-01", model="1111")  # retrained: a new candidate
    evaluate_stage(gate_settings, "2026-01-01")  # the retrained model passes the gate, but nobody re-scored
    with pytest.raises(
        LakeError,
        match=r"scores of ds=2026-01-01 domain=books come from \['models/ds=2026-01-01/model=202601010000'\].*re-run the score stage",
    ):
        publish_stage(gate_settings, "2026-01-01")


def test_report_passes_a_complete_or_gated_night_and_names_failed_or_missing_stages(lake, gate_settings):
    upstream_succeeded(lake, gate_settings, "2026-01-01", stages=("clean", "featurize", "train", "score"))
    evaluate_and_publish(lake, gate_settings, "2026-01-01", 0.20)
    ok = report_stage(gate_settings, "2026-01-01")
    assert ok.status == StageStatus.SUCCESS and set(ok.metrics["stages"].values()) == {"success"}
    assert len(ok.metrics["stages"]) == 7  # clean x 2 domains, featurize, train, evaluate, score, publish

    upstream_succeeded(lake, gate_settings, "2026-01-02")
    evaluate_and_publish(lake, gate_settings, "2026-01-02", 0.10)  # gated: no score expected
    gated = report_stage(gate_settings, "2026-01-02")
    assert gated.status == StageStatus.SUCCESS and "below" in gated.metrics["gated"]

    upstream_succeeded(lake, gate_settings, "2026-01-03", stages=("clean",))
    with pytest.raises(RuntimeError, match="disk full"), stage_run(lake, "featurize", "2026-01-03"):
        raise RuntimeError("disk full")
    with pytest.raises(RunFailed, match=r"ds=2026-01-03: featurize\[all\] failed: RuntimeError: disk full; train\[all\] did not run"):
        report_stage(gate_settings, "2026-01-03")


def test_report_of_a_date_nothing_ran_for_fails(lake, gate_settings):
    evaluate_and_publish(lake, gate_settings, "2026-01-01", 0.20)
    with pytest.raises(RunFailed, match=r"ds=2026-01-09: clean\[movies\] did not run; clean\[books\] did not run; featurize"):
        report_stage(gate_settings, "2026-01-09")
