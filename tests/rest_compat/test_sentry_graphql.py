"""What the Sentry SDKs send is what the GraphQL API shows: the group, the frames with
their context, the tags, user and contexts, and the SDKs' client reports."""

from __future__ import annotations

from pathlib import Path

from support import GQL

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sentry"


def auth(key: str) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1"}


async def test_python_sdk_event_through_graphql(gql: GQL, app_client, app_project):
    body = (FIXTURES / "python_chained_exception.envelope").read_bytes()
    response = await app_client.http.post(
        f"/api/{app_project.project.id}/envelope/",
        content=body,
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 200
    data = await gql(
        """query($id: ID!) { event(id: $id) {
            source platform release environment serverName tags contexts breadcrumbs
            user { externalId email } fingerprint
            exception { type value mechanism frames { function module filename lineno inApp
              contextLine preContext postContext vars } }
            group { title culprit count groupingReason }
        } }""",
        {"id": "a5ca732b2e474116bc39d580266031d8"},
    )
    event = data["event"]
    assert (event["source"], event["platform"], event["release"]) == (
        "sentry",
        "python",
        "shop@2.4.1",
    )
    assert event["group"]["title"] == "PaymentDeclined: card declined for order 1009"
    assert event["group"]["culprit"] == "shop.checkout in charge"
    assert [e["type"] for e in event["exception"]] == ["ZeroDivisionError", "PaymentDeclined"]
    charge = event["exception"][1]["frames"][-1]
    assert (charge["function"], charge["module"], charge["lineno"], charge["inApp"]) == (
        "charge",
        "shop.checkout",
        11,
        True,
    )
    assert charge["contextLine"].strip().startswith("raise PaymentDeclined(")
    assert charge["preContext"][-1].strip() == "except ZeroDivisionError as exc:"
    assert charge["vars"]["order"] == {"id": "1009", "total": "30", "quantity": "0"}
    assert event["user"] == {"externalId": "42", "email": "[email protected]"}
    assert event["tags"] == {"shop.region": "eu-west"}
    assert event["contexts"]["order"] == {"id": 1009, "items": 3}
    assert [crumb["category"] for crumb in event["breadcrumbs"]] == ["cart", "http"]
    assert event["fingerprint"] == ["{{ default }}", "payments"]


async def test_client_reports_through_graphql(gql: GQL, app_client, app_project):
    body = (FIXTURES / "node_client_report.envelope").read_bytes()
    response = await app_client.http.post(
        f"/api/{app_project.project.id}/envelope/",
        content=body,
        headers=auth(app_project.ingest_key.secret),
    )
    assert response.status_code == 200
    data = await gql(
        "query($p: ID!) { clientReports(projectId: $p) { reason category quantity } }",
        {"p": str(app_project.project.id)},
    )
    assert data["clientReports"] == [{"reason": "before_send", "category": "error", "quantity": 1}]
    later = await gql(
        'query($p: ID!) { clientReports(projectId: $p, since: "2030-01-01T00:00:00Z") { quantity } }',
        {"p": str(app_project.project.id)},
    )
    assert later["clientReports"] == []
