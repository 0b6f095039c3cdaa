from __future__ import annotations

from support import AppClient


async def test_health_ok(app_client: AppClient):
    for path in ("/health", "/health/ready", "/health/live"):
        response = await app_client.http.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_health_503_when_database_is_gone(app_client: AppClient):
    await app_client.runtime.database.engine.dispose()
    settings = app_client.runtime.settings
    path = settings.sqlite_path
    assert path is not None
    # Make the file unusable: a directory where the database was.
    for suffix in ("", "-wal", "-shm"):
        target = path.with_name(path.name + suffix)
        if target.exists():
            target.unlink()
    path.mkdir()
    response = await app_client.http.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "database unavailable" in body["reason"]
    live = await app_client.http.get("/health/live")
    assert live.status_code == 200
    path.rmdir()


async def test_unknown_path_is_json_404(app_client: AppClient):
    response = await app_client.http.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
