"""Source maps over GraphQL, merged into the Query and Mutation roots by the schema: the
same store as `POST /api/v1/releases/{release}/sourcemaps`, for tools that already hold
a token. Listing needs `read` on the project, uploading and deleting `write`.
"""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.errors import ErrorgraphError
from app.services import sourcemaps as sourcemap_service
from app.services.sourcemaps import StoredSourceMap

from .context import Info
from .queries import readable_project, required_id

# The service's field names → the arguments that carry them.
ARGUMENTS = {"sourcemap": "sourceMap", "project": "projectId"}


@strawberry.type(name="SourceMap")
class SourceMapType:
    id: strawberry.ID
    project_id: strawberry.ID
    release: str
    url: str = strawberry.field(
        description="The minified file it resolves: a URL, a path (`~/static/app.js`: on "
        "any host) or a file name."
    )
    name: str
    size: int = strawberry.field(description="Bytes of the map.")
    created_at: datetime = strawberry.field(description="When it was uploaded (or replaced).")

    @classmethod
    def from_stored(cls, row: StoredSourceMap) -> SourceMapType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            release=row.release,
            url=row.url,
            name=row.name,
            size=row.size,
            created_at=row.created_at,
        )


def _renamed(exc: ErrorgraphError) -> ErrorgraphError:
    exc.field = ARGUMENTS.get(exc.field or "", exc.field)
    return exc


@strawberry.type
class SourceMapQuery:
    @strawberry.field(description="The source maps uploaded for one release of a project.")
    async def source_maps(
        self, info: Info, project_id: strawberry.ID, release: str
    ) -> list[SourceMapType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        rows = await sourcemap_service.list_source_maps(
            sessions=info.context.sessions, project_id=parsed, release=release
        )
        return [SourceMapType.from_stored(row) for row in rows]


@strawberry.type
class SourceMapMutation:
    @strawberry.mutation(
        description="Store the source map (its JSON text) of one minified file of a "
        "release; an upload for the same release and url replaces it. JavaScript frames of "
        "later events of that release are resolved through it."
    )
    async def upload_source_map(
        self,
        info: Info,
        project_id: strawberry.ID,
        release: str,
        url: str,
        source_map: str,
        name: str = "",
    ) -> SourceMapType:
        parsed = required_id(project_id, "projectId")
        await info.context.require("write", parsed)
        try:
            row = await sourcemap_service.store_source_map(
                sessions=info.context.sessions,
                project_id=parsed,
                release=release,
                url=url,
                content=source_map.encode("utf-8"),
                name=name,
            )
        except ErrorgraphError as exc:
            raise _renamed(exc) from None
        return SourceMapType.from_stored(row)

    @strawberry.mutation(description="Delete a source map; answers the map as it was.")
    async def delete_source_map(self, info: Info, id: strawberry.ID) -> SourceMapType:
        await info.context.require("write")
        found = await sourcemap_service.source_map_by_id(
            sessions=info.context.sessions, map_id=required_id(id, "id")
        )
        await info.context.require("write", found.project_id)
        row = await sourcemap_service.delete_source_map(
            sessions=info.context.sessions, project_id=found.project_id, map_id=found.id
        )
        return SourceMapType.from_stored(row)
