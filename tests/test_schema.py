"""schema.graphql is the contract: it must be exactly what the code exports."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_schema_file_is_current():
    exported = subprocess.run(
        [sys.executable, "-m", "strawberry", "export-schema", "app.graphql.schema:schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / "schema.graphql").read_text()
    assert exported.strip() == committed.strip(), (
        "schema.graphql is stale: run strawberry export-schema app.graphql.schema:schema "
        "> schema.graphql"
    )


def test_contract_names_are_there():
    text = (ROOT / "schema.graphql").read_text()
    for name in (
        "enum GroupStatus",
        "enum GroupSort",
        "enum BulkAction",
        "enum ExportFormat",
        "type GroupConnection",
        "resolveGroup(id: ID!, inNextRelease: Boolean! = false): Group!",
        "bulkUpdateGroups(ids: [ID!]!, action: BulkAction!): BulkResult!",
    ):
        assert name in text, name
