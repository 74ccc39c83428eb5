"""The MLflow model registry with a promotion gate: alias ``champion`` or ``challenger`` for each new version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException

from digits.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG = "promotion_decision"  # the Decision made when the version was registered, as JSON


@dataclass(frozen=True)
class Score:
    accuracy: float
    loss: float


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: int
    alias: str  # CHAMPION or CHALLENGER
    test_accuracy: float
    test_loss: float
    previous_champion_version: int | None
    champion_test_accuracy: float | None
    champion_test_loss: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        new = f"{self.model_name} v{self.version} (test accuracy {self.test_accuracy:.4f}, loss {self.test_loss:.4f})"
        if self.previous_champion_version is None:
            return f"{new} → {CHAMPION}: first version with a score"
        old = (
            f"v{self.previous_champion_version} (test accuracy {self.champion_test_accuracy:.4f}, "
            f"loss {self.champion_test_loss:.4f})"
        )
        verb = "matches or beats" if self.alias == CHAMPION else "is worse than"
        return f"{new} {verb} {CHAMPION} {old} → {self.alias}"


def promotes(new: Score, champion: Score | None) -> bool:
    """Whether ``new`` takes the champion alias: higher test accuracy, or equal accuracy and loss no higher."""
    if champion is None:
        return True
    if new.accuracy != champion.accuracy:
        return new.accuracy > champion.accuracy
    return new.loss <= champion.loss


def version_score(version) -> Score:
    """The score a registered version was tagged with (``test_accuracy``, ``test_loss``)."""
    try:
        return Score(float(version.tags["test_accuracy"]), float(version.tags["test_loss"]))
    except (KeyError, ValueError):
        raise UserError(
            f"model {version.name} v{version.version} has no numeric test_accuracy/test_loss tags; "
            "tag it or remove its champion alias"
        ) from None


def current_champion(client: mlflow.MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model yet, or no champion alias
        return None


def find_decision(name: str, identity: dict[str, str]) -> Decision | None:
    """The decision recorded for an already registered version of ``name`` whose tags include all of ``identity``
    (e.g. the run and checkpoint MD5), or None: registering the same checkpoint twice is a no-op."""
    query = " and ".join([f"name = '{name}'", *(f"tags.{k} = '{v}'" for k, v in identity.items())])
    for version in mlflow.MlflowClient().search_model_versions(query, order_by=["version_number ASC"]):
        if DECISION_TAG in version.tags:
            return Decision(**json.loads(version.tags[DECISION_TAG]))
    return None


def register(model_uri: str, name: str, score: Score, tags: dict[str, str]) -> Decision:
    """Register ``model_uri`` as a new version of ``name`` tagged with ``tags`` and its score, then point
    ``champion`` at it if ``promotes`` says so, else ``challenger``. The decision is recorded as the version's
    ``promotion_decision`` tag (``find_decision``). Uses the current MLflow tracking URI."""
    client = mlflow.MlflowClient()
    champion = current_champion(client, name)
    champion_score = version_score(champion) if champion is not None else None
    all_tags = {**tags, "test_accuracy": repr(score.accuracy), "test_loss": repr(score.loss)}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    alias = CHAMPION if promotes(score, champion_score) else CHALLENGER
    client.set_registered_model_alias(name, alias, version.version)
    decision = Decision(
        model_name=name,
        version=int(version.version),
        alias=alias,
        test_accuracy=score.accuracy,
        test_loss=score.loss,
        previous_champion_version=int(champion.version) if champion is not None else None,
        champion_test_accuracy=champion_score.accuracy if champion_score else None,
        champion_test_loss=champion_score.loss if champion_score else None,
    )
    client.set_model_version_tag(name, version.version, DECISION_TAG, json.dumps(decision.as_dict()))
    return decision
