from __future__ import annotations

from pathlib import Path

import pytest

from app.config import SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROADCAST_URL", "PORT", "PUBLIC_URL", "HOST"):
        monkeypatch.delenv(f"ERRORGRAPH_{name}", raising=False)
    settings = load_settings()
    assert settings.database_url == "sqlite+aiosqlite:///./data/errorgraph.db"
    assert settings.broadcast_url == "memory://"
    assert settings.port == 8000
    assert settings.sqlite_path == Path("data/errorgraph.db")
    assert settings.base_url() == "http://127.0.0.1:8000"


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "ERRORGRAPH_PORT=9100\nERRORGRAPH_PUBLIC_URL=https://e.example/\n"
    )
    monkeypatch.setenv("ERRORGRAPH_DATABASE_URL", "postgres://u:p@db/errors")
    settings = load_settings()
    assert settings.port == 9100
    assert settings.base_url() == "https://e.example"
    assert settings.database_url == "postgresql+asyncpg://u:p@db/errors"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "0"),
        ("PORT", "http"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("BROADCAST_URL", "carrier-pigeon://"),
        ("PUBLIC_URL", "errors.example.com"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_invalid_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str):
    monkeypatch.setenv(f"ERRORGRAPH_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert f"ERRORGRAPH_{name}:" in str(caught.value)
