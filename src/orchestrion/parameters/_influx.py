"""Parameters in InfluxDB, over the v1 HTTP API (`/write` line protocol, `/query` InfluxQL).

InfluxDB 1.x serves this API natively and 2.x/3.x through their v1-compatibility
endpoints, so one backend reaches every version. The layout (see docs/parameters.md):

    measurement  parameter
    tags         id (qubit.frequency), namespace (qubit), type (float), group (when set),
                 writer (a random id of the writing process)
    fields       value_float | value_int | value_bool | value_str (one per point), source
    time         when the value was set, microsecond precision

One field per value type because InfluxDB fixes a field's type per shard: a float and a
string parameter cannot share a `value` field, and numeric fields stay plottable.

The `writer` tag is there because InfluxDB keeps one point per series and time: two
processes setting the same parameter in the same microsecond would otherwise write one
point, and the other value would be silently lost. Each process's clock is strictly
increasing (`now_utc`), so a series per writing process makes every point unique.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from ._spec import ParameterSpec, ParameterType, ParameterValue, ParameterValueType
from ._store import (
    BaseParameterStore,
    ParameterStoreError,
    ParameterStoreUnavailable,
    from_micros,
    to_micros,
)

logger = logging.getLogger(__name__)

MEASUREMENT = "parameter"
VALUE_FIELDS: dict[type, str] = {bool: "value_bool", int: "value_int", float: "value_float", str: "value_str"}

# A write from a machine whose clock runs behind ours can carry a timestamp older than
# our last cache check; the change query looks back this far to still see it. Lab
# machines synchronised by NTP are milliseconds apart.
CLOCK_SKEW_ALLOWANCE_S = 5.0


def _new_writer_id() -> str:
    return secrets.token_hex(4)


_writer_id = _new_writer_id()


def _renew_writer_id() -> None:
    # A forked child inherits the parent's clock state: it must not share its series.
    global _writer_id
    _writer_id = _new_writer_id()


os.register_at_fork(after_in_child=_renew_writer_id)


def writer_id() -> str:
    """This process's `writer` tag value (random, new in every process and forked child)."""
    return _writer_id


class _TokenAuth(httpx.Auth):
    """`Authorization: Token ...` (InfluxDB 2.x/3.x v1 compatibility); the token stays secret."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Token {self._token.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_TokenAuth(**********)"


def _public_url(url: str) -> str:
    """The URL without any user:password part, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _escape_tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_string_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _field_value(value: ParameterValueType) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same double
    return f'"{_escape_string_field(value)}"'


def line_protocol(
    value: ParameterValue, spec: ParameterSpec, measurement: str = MEASUREMENT, *, writer: str | None = None
) -> str:
    """The point that stores ``value``: what Orchestrion writes, and what others may write.

    The store passes its process's ``writer`` id; other programs may leave it out.
    """
    tags = [("id", value.id), ("namespace", spec.namespace), ("type", spec.type.value)]
    if spec.group:  # line protocol has no empty tag values
        tags.append(("group", spec.group))
    if writer:
        tags.append(("writer", writer))
    tag_text = ",".join(f"{key}={_escape_tag(text)}" for key, text in sorted(tags))
    field = VALUE_FIELDS[type(value.value)]
    fields = f'{field}={_field_value(value.value)},source="{_escape_string_field(value.source)}"'
    return f"{_escape_tag(measurement)},{tag_text} {fields} {to_micros(value.timestamp)}"


class InfluxParameterStore(BaseParameterStore):
    """Parameters with full history in an InfluxDB database, through the v1 HTTP API.

    Opening checks that the server answers and the database exists (creating it on 1.x
    when allowed), so an unreachable server stops a session before anything runs. The
    cache of latest values is refreshed before each cached read by one query for points
    newer than the previous check, so values written by another process, the influx CLI
    or Telegraf are seen. Reads as of a time always query the server.
    """

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: SecretStr | None = None,
        token: SecretStr | None = None,
        timeout: float = 5.0,
        measurement: str = MEASUREMENT,
        clock_skew: float = CLOCK_SKEW_ALLOWANCE_S,
    ) -> None:
        super().__init__()
        self.clock_skew = clock_skew
        self.url = _public_url(url)
        self.database = database
        self.measurement = measurement
        auth: httpx.Auth | None = None
        if token is not None:
            auth = _TokenAuth(token)
        elif username is not None:
            auth = httpx.BasicAuth(username, password.get_secret_value() if password else "")
        self._http = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)
        self._checked_at: float | None = None
        try:
            self._check_server()
        except BaseException:
            self._http.close()
            raise

    # Checking the cache costs a round trip here, as much as reading a few ids outright.
    direct_read_below = 32

    def __repr__(self) -> str:
        return f"InfluxParameterStore({self.url!r}, {self.database!r})"

    # -- HTTP ------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ParameterStoreUnavailable(f"InfluxDB at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ParameterStoreUnavailable(f"InfluxDB at {self.url} is unreachable: {exc}") from None
        if response.status_code in (401, 403):
            raise ParameterStoreUnavailable(
                f"InfluxDB at {self.url} refused the credentials (HTTP {response.status_code})"
            )
        return response

    def _error_text(self, response: httpx.Response) -> str:
        try:
            return str(response.json().get("error", response.text)).strip()
        except ValueError:
            return response.text.strip()[:200] or f"HTTP {response.status_code}"

    def _query(self, statement: str, *, database: bool = True) -> list[dict[str, Any]]:
        """Run one InfluxQL statement; its series, or a clear error."""
        form = {"q": statement, "epoch": "u"}
        if database:
            form["db"] = self.database
        response = self._request("POST", "/query", data=form)
        if response.status_code == 404:
            raise ParameterStoreUnavailable(f"{self.url} serves no InfluxDB /query endpoint (HTTP 404)")
        if response.status_code != 200:
            raise ParameterStoreError(f"InfluxDB at {self.url}: query failed: {self._error_text(response)}")
        results = response.json().get("results", [{}])
        error = results[0].get("error")
        if error:
            raise ParameterStoreError(f"InfluxDB at {self.url}, database '{self.database}': {error}")
        series: list[dict[str, Any]] = results[0].get("series", [])
        return series

    def _check_server(self) -> None:
        response = self._request("GET", "/ping")
        if response.status_code not in (200, 204):  # 1.x and 2.x answer 204, 3.x 200
            raise ParameterStoreUnavailable(
                f"{self.url} is not an InfluxDB server (/ping: HTTP {response.status_code})"
            )
        try:
            self._query(f"SHOW RETENTION POLICIES ON {self._identifier(self.database)}", database=False)
        except ParameterStoreUnavailable:
            raise
        except ParameterStoreError as exc:
            if "database not found" not in str(exc):
                # Servers that speak only part of InfluxQL (2.x/3.x compatibility) may not
                # know the statement: the first real read or write will tell.
                logger.warning("could not check database %s on %s: %s", self.database, self.url, exc)
                return
            try:
                self._query(f"CREATE DATABASE {self._identifier(self.database)}", database=False)
            except ParameterStoreError as create_failed:
                raise ParameterStoreUnavailable(
                    f"InfluxDB at {self.url} has no database '{self.database}' and could not create it: {create_failed}"
                ) from None
            logger.info("created InfluxDB database %s on %s", self.database, self.url)

    @staticmethod
    def _identifier(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    # -- storage primitives ------------------------------------------------------------
    def _write_lines(self, lines: list[str]) -> None:
        response = self._request(
            "POST", "/write", params={"db": self.database, "precision": "u"}, content="\n".join(lines).encode()
        )
        if response.status_code != 204:
            raise ParameterStoreError(f"InfluxDB at {self.url} refused the write: {self._error_text(response)}")

    def _line(self, value: ParameterValue, spec: ParameterSpec) -> str:
        return line_protocol(value, spec, self.measurement, writer=writer_id())

    def _write(self, value: ParameterValue, spec: ParameterSpec) -> None:
        self._write_lines([self._line(value, spec)])

    def _write_defaults(self, defaults: list[tuple[ParameterValue, ParameterSpec]]) -> list[str]:
        # InfluxDB has no transactions: read, then write the missing ones in one request.
        stored = self._read([value.id for value, _ in defaults], None)
        missing = [(value, spec) for value, spec in defaults if value.id not in stored]
        if missing:
            self._write_lines([self._line(value, spec) for value, spec in missing])
        return [value.id for value, _ in missing]

    def _where_ids(self, ids: list[str]) -> str:
        if len(ids) == 1:
            return f'"id" = {_quote_literal(ids[0])}'
        # An anchored alternation is planned as a set of tag lookups: for 1,000 ids it was
        # 8 times faster on influxd 1.6 than the same ids joined with OR.
        alternatives = "|".join(re.escape(i).replace("/", "\\/") for i in ids)
        return f'"id" =~ /^({alternatives})$/'

    def _read(self, ids: list[str], at: datetime | None) -> dict[str, ParameterValue]:
        if not ids:
            return {}
        when = "" if at is None else f" AND time <= {to_micros(at)}u"
        series = self._query(
            f"SELECT * FROM {self._identifier(self.measurement)} WHERE {self._where_ids(ids)}{when} "
            'GROUP BY "id" ORDER BY time DESC LIMIT 1'
        )
        return {value.id: value for value in self._decode_series(series)}

    def _read_history(self, parameter_id: str, since: datetime | None, until: datetime | None) -> list[ParameterValue]:
        bounds = ""
        if since is not None:
            bounds += f" AND time >= {to_micros(since)}u"
        if until is not None:
            bounds += f" AND time <= {to_micros(until)}u"
        series = self._query(
            f"SELECT * FROM {self._identifier(self.measurement)} "
            f'WHERE "id" = {_quote_literal(parameter_id)}{bounds} ORDER BY time ASC'
        )
        return sorted(self._decode_series(series), key=lambda v: v.timestamp)

    def _revalidate_cache(self) -> None:
        started = time.time()
        # With nothing cached there is nothing to refresh: the reads that fill the cache
        # come after `started`, so the next check's window covers whatever follows them.
        if self._cache and self._checked_at is not None:
            since = int((self._checked_at - self.clock_skew) * 1e6)
            # Every recent point, not the latest per id: without GROUP BY influxd does half
            # the work, and `_offer` keeps only what is newer than the cached entry.
            series = self._query(f"SELECT * FROM {self._identifier(self.measurement)} WHERE time > {since}u")
            for value in self._decode_series(series):
                self._offer(value)
        self._checked_at = started

    def _decode_series(self, series: list[dict[str, Any]]) -> list[ParameterValue]:
        values = []
        for one in series:
            columns: list[str] = one["columns"]
            tags: dict[str, str] = one.get("tags") or {}
            for row in one.get("values", []):
                record = dict(zip(columns, row, strict=True))
                parameter_id = tags.get("id") or record.get("id")
                if not parameter_id:
                    continue
                decoded = self._decode_value(parameter_id, record)
                if decoded is None:
                    continue
                values.append(
                    ParameterValue.model_construct(
                        id=parameter_id,
                        value=decoded,
                        timestamp=from_micros(int(record["time"])),
                        source=str(record.get("source") or ""),
                    )
                )
        return values

    def _decode_value(self, parameter_id: str, record: dict[str, Any]) -> ParameterValueType | None:
        spec = self._specs.get(parameter_id)
        present: dict[str, Any] = {
            field: record[field] for field in VALUE_FIELDS.values() if record.get(field) is not None
        }
        if not present:
            logger.warning("InfluxDB point of %s has no value field: ignored", parameter_id)
            return None
        # JSON has one number type: a float field may arrive as 2, an int as 2.
        if "value_float" in present:
            number = float(present["value_float"])
            if spec is not None and spec.type is ParameterType.INT and number.is_integer():
                return int(number)
            return number
        if "value_int" in present:
            integer = int(present["value_int"])
            return float(integer) if spec is not None and spec.type is ParameterType.FLOAT else integer
        if "value_bool" in present:
            return bool(present["value_bool"])
        return str(present["value_str"])

    def close(self) -> None:
        self._http.close()
