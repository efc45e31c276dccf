"""The configuration reference in docs/ is generated from the configs and must be current."""

from rac.docs import configuration_reference
from tests.conftest import REPO


def test_configuration_reference_is_current():
    current = (REPO / "docs" / "configuration.md").read_text()
    assert current == configuration_reference(), "run: python -m rac.docs > docs/configuration.md"


def test_reference_covers_every_job():
    text = configuration_reference()
    for job in ("jobs.pipeline", "jobs.index", "jobs.retrieve", "jobs.train_sft", "jobs.train_rac",
                "jobs.generate_negatives", "jobs.evaluate", "jobs.prepare_model", "jobs.experiment"):
        assert f"`{job}`" in text
    assert "gamma (float, default 0.5): Weight of the preference term" in text
    assert "loss_type (str, default 'sigmoid'): Preference loss" in text
