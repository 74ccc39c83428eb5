"""The promotion gate: rules, and the real MLflow model registry (a sqlite store in a temporary directory)."""

from __future__ import annotations

import mlflow
import pytest
from helpers import store_uri

from digits import registry
from digits.errors import UserError
from digits.registry import CHALLENGER, CHAMPION, Score


@pytest.mark.parametrize(
    ("new", "champion", "promoted"),
    [
        (Score(0.90, 0.30), None, True),  # no champion yet
        (Score(0.91, 0.90), Score(0.90, 0.10), True),  # higher accuracy wins whatever the loss
        (Score(0.89, 0.01), Score(0.90, 0.30), False),  # lower accuracy loses whatever the loss
        (Score(0.90, 0.29), Score(0.90, 0.30), True),  # tie on accuracy: lower loss wins
        (Score(0.90, 0.30), Score(0.90, 0.30), True),  # full tie: "at least as good" promotes
        (Score(0.90, 0.31), Score(0.90, 0.30), False),  # tie on accuracy, higher loss
    ],
)
def test_promotes(new: Score, champion: Score | None, promoted: bool):
    assert registry.promotes(new, champion) is promoted


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating its tables takes seconds); each test uses its own model name.
    Yields the URI of a model directory to register."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = store_uri(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        (tmp / "model").mkdir()
        (tmp / "model" / "MLmodel").write_text("flavors: {}\n")
        yield (tmp / "model").as_uri()
        mlflow.set_tracking_uri(None)


def aliases(name: str) -> dict[str, int]:
    return {k: int(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def test_gate_moves_champion_only_for_a_score_at_least_as_good(store):
    name, tags = "digits-test", {"git_commit": "abc", "data_md5.t10k-labels-idx1-ubyte": "27ae"}
    steps = [  # (score, alias the new version gets, champion afterwards)
        (Score(0.90, 0.30), CHAMPION, 1),
        (Score(0.85, 0.10), CHALLENGER, 1),
        (Score(0.90, 0.25), CHAMPION, 3),  # tie on accuracy, lower loss
        (Score(0.90, 0.40), CHALLENGER, 3),  # tie on accuracy, higher loss
        (Score(0.95, 0.50), CHAMPION, 5),
    ]
    previous = None
    for version, (score, alias, champion) in enumerate(steps, start=1):
        d = registry.register(store, name, score, tags)
        assert (d.version, d.alias, d.previous_champion_version) == (version, alias, previous)
        assert aliases(name)[CHAMPION] == champion
        if alias == CHALLENGER:
            assert aliases(name)[CHALLENGER] == version
            best = steps[champion - 1][0]
            assert (d.champion_test_accuracy, d.champion_test_loss) == (best.accuracy, best.loss)
        previous = champion
    v = mlflow.MlflowClient().get_model_version(name, "5")
    assert v.tags["git_commit"] == "abc" and v.tags["data_md5.t10k-labels-idx1-ubyte"] == "27ae"
    assert float(v.tags["test_accuracy"]) == 0.95 and float(v.tags["test_loss"]) == 0.5


def test_decision_describe_names_both_scores(store):
    first = registry.register(store, "m", Score(0.9, 0.3), {})
    assert "champion: first version" in first.describe()
    second = registry.register(store, "m", Score(0.8, 0.2), {})
    text = second.describe()
    assert "v2" in text and "0.8000" in text and "v1" in text and "0.9000" in text and text.endswith("challenger")


def test_a_champion_without_score_tags_is_a_clear_error(store):
    client = mlflow.MlflowClient()
    client.create_registered_model("hand")
    v = client.create_model_version("hand", store)
    client.set_registered_model_alias("hand", CHAMPION, v.version)
    with pytest.raises(UserError, match="hand v1 has no numeric test_accuracy"):
        registry.register(store, "hand", Score(0.9, 0.3), {})


def test_a_registered_identity_finds_its_recorded_decision(store):
    name = "digits-test-identity"
    ident = {"run_id": "r1", "checkpoint_md5": "aa"}
    assert registry.find_decision(name, ident) is None  # no such model yet
    first = registry.register(store, name, Score(0.9, 0.3), ident)
    second = registry.register(store, name, Score(0.8, 0.3), {"run_id": "r2", "checkpoint_md5": "bb"})
    assert registry.find_decision(name, ident) == first
    assert registry.find_decision(name, {"run_id": "r2", "checkpoint_md5": "bb"}) == second
    assert registry.find_decision(name, {"run_id": "r1", "checkpoint_md5": "bb"}) is None
