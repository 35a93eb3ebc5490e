"""Hot-path SQL without the ORM's query compiler (PostgreSQL).

On the routing hot path each ORM query cost 0.3 to 0.6 ms of CPU in Django's SQL compiler, more
than PostgreSQL took to answer it. These helpers build the same statements once per model
(from `_meta`, as Django's own compilers do, so a new field can't silently be left out), bind
values with each field's own `get_db_prep_save`, and turn rows back into model instances with
`Model.from_db` and each field's `from_db_value`. Callers keep an ORM path for SQLite, and
tests turn `ENABLED` off to run that path on PostgreSQL too.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

M = TypeVar("M", bound=models.Model)

ENABLED = True


def db() -> BaseDatabaseWrapper:
    # Resolved once per call: every attribute read through `django.db.connection` is a
    # thread-local lookup, and binding ~20 fields does hundreds of them.
    return connections[DEFAULT_DB_ALIAS]


def enabled() -> bool:
    return ENABLED and db().vendor == "postgresql"


def quote(name: str) -> str:
    return db().ops.quote_name(name)


@cache
def insert_columns(model: type[models.Model], computed: tuple[str, ...] = ()) -> tuple[list[models.Field], str, str]:
    """Fields to bind (all but the primary key and the ``computed`` columns, which the statement
    fills itself), the column list, and the typed placeholders for INSERT … SELECT (whose
    select list, unlike VALUES, is not coerced to the target columns' types)."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key and f.column not in computed]
    columns = ", ".join(quote(column) for column in [*computed, *(str(f.column) for f in fields)])
    placeholders = ", ".join(f"CAST(%s AS {f.db_type(db())})" for f in fields)
    return fields, columns, placeholders


def save_params(connection: BaseDatabaseWrapper, obj: models.Model, fields: list[models.Field]) -> list[Any]:
    return [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]


@cache
def select_list(model: type[models.Model], alias: str) -> tuple[list[models.Field], str]:
    """All concrete fields of ``model`` and their columns qualified by the table ``alias``."""
    fields = list(model._meta.concrete_fields)
    return fields, ", ".join(f"{alias}.{quote(str(f.column))}" for f in fields)


def from_row(model: type[M], fields: list[models.Field], row: tuple[Any, ...] | list[Any]) -> M:
    """A model instance from the columns of ``select_list`` (as the ORM would load it)."""
    connection = db()
    values = [
        f.from_db_value(value, None, connection) if hasattr(f, "from_db_value") else value
        for f, value in zip(fields, row, strict=True)
    ]
    return model.from_db(connection.alias, [f.attname for f in fields], values)


def insert(obj: models.Model) -> None:
    """INSERT ``obj`` as `obj.save(force_insert=True)` would, in one statement without the
    compiler (an auto primary key comes back with RETURNING)."""
    model = type(obj)
    connection = db()
    fields, sql, returns_pk = _insert_plan(model)
    with connection.cursor() as cursor:
        cursor.execute(sql, save_params(connection, obj, fields))
        if returns_pk:
            obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = connection.alias


@cache
def _insert_plan(model: type[models.Model]) -> tuple[list[models.Field], str, bool]:
    pk = model._meta.pk
    returns_pk = isinstance(pk, models.AutoField)
    fields = [f for f in model._meta.concrete_fields if not (returns_pk and f.primary_key)]
    columns = ", ".join(quote(str(f.column)) for f in fields)
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"  # noqa: S608 - identifiers from model metadata; values are bound
    if returns_pk:
        sql += f" RETURNING {quote(str(pk.column))}"
    return fields, sql, returns_pk
