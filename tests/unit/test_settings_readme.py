"""The README's configuration table and the settings class list the same settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_and_nothing_else() -> None:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(INTENT_[A-Z0-9_]+)` \|", section, flags=re.M))
    declared = {f"INTENT_{name.upper()}" for name in Settings.model_fields}
    assert documented == declared


def test_settings_come_from_the_environment_and_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_KAFKA_BOOTSTRAP", "k1:9092, k2:9093")
    monkeypatch.setenv("INTENT_REDIS_URL", "redis://:secret@r:6379/1")
    monkeypatch.setenv("INTENT_TOPIC_DEAD_LETTER", "dlq")
    settings = Settings()
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.redis_url.get_secret_value() == "redis://:secret@r:6379/1"
    assert "secret" not in repr(settings)
    assert settings.topic_names()["topic_dead_letter"] == "dlq"
    with pytest.raises(Exception, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


def test_bad_setting_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENT_PARTITIONS", "0")
    with pytest.raises(Exception, match=r"INTENT_PARTITIONS|partitions"):
        Settings()


def test_the_worker_keeps_its_local_data_under_the_data_dir(tmp_path: Path) -> None:
    from stream.worker.app import create_app

    settings = Settings(app_id="shop-a", data_dir=tmp_path / "data")
    app = create_app(settings)
    assert Path(app.conf.datadir) == tmp_path / "data" / "shop-a"
    assert Path(app.conf.appdir).is_relative_to(tmp_path / "data" / "shop-a")
