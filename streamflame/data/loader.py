"""Read any CSV/Parquet table of observations into regular-grid :class:`Series`.

Two layouts are accepted (column names are case-insensitive):

* **long**: one row per observation with an id column (``series_id``, ``item_id``,
  ``unique_id``, ``id``), a time column (``timestamp``, ``ds``, ``time``, ``date``,
  ``datetime``, ``date_time``) and a value column (``value``, ``target``, ``y``);
  a table with only a time and a value column is one series named after the file.
* **wide**: a time column plus one numeric column per series (the column name is the id).

Timestamps may be ISO-8601 strings (naive or with an offset), datetime columns
(Parquet), or numbers: epoch milliseconds when ``|x| >= 1e11``, else epoch seconds.
The input's time zone is kept (``Series.start.tz``) so that results can be written back
in it; ``tz=`` localises naive input or converts aware input.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .series import Series, parse_freq, to_grid
from .times import epoch_ns

ID_COLUMNS = ("series_id", "item_id", "unique_id", "id")
TIME_COLUMNS = ("timestamp", "ds", "time", "date", "datetime", "date_time")
VALUE_COLUMNS = ("value", "target", "y")


# Tried first when a zone must be guessed from UTC offsets (see zone_for_offsets).
COMMON_ZONES = ("Europe/London", "Europe/Berlin", "Europe/Helsinki", "Europe/Moscow", "America/New_York",
                "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
                "America/Sao_Paulo", "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo", "Australia/Sydney",
                "Australia/Melbourne", "Australia/Brisbane", "Pacific/Auckland")


class DataError(ValueError):
    """A data file cannot be read as series; the message names the file and the column."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet file into a DataFrame of raw columns."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if ".parquet" in suffixes or ".pq" in suffixes:
            return pd.read_parquet(path)
        if ".csv" in suffixes or ".txt" in suffixes or ".tsv" in suffixes:
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",", low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read table: {exc}") from exc
    raise DataError(f"{path}: unsupported file type (expected .csv[.gz|.xz|...] or .parquet)")


def _find(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _mixed_offsets(column: pd.Series) -> bool:
    """True when a text time column mixes different UTC offsets (or offsets and naive times)."""
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return False
    offsets = _offset_minutes(column.astype("string").fillna(""))
    absent = np.isnan(offsets)
    return bool(not absent.all() and (absent.any() or np.unique(offsets[~absent]).size > 1))


def parse_timestamps(column: pd.Series, *, where: str, tz: str | None = None,
                     prefer_zones: list[str] | tuple[str, ...] = ()) -> pd.DatetimeIndex:
    """Parse one column of timestamps; raise :class:`DataError` naming ``where`` on failure.

    Mixed UTC offsets (e.g. a DST change written as +01:00/+02:00) are put in an IANA
    zone whose offsets agree with every change of offset in the data, so local
    times written back are the input's; if no zone fits, UTC. ``tz`` overrides both.
    """
    if pd.api.types.is_datetime64_any_dtype(column):
        idx = pd.DatetimeIndex(column)
    elif pd.api.types.is_numeric_dtype(column):
        x = column.to_numpy(dtype=np.float64)
        if np.isnan(x).any():
            raise DataError(f"{where}: {int(np.isnan(x).sum())} empty timestamps")
        unit = "ms" if np.nanmax(np.abs(x)) >= 1e11 else "s"
        idx = pd.DatetimeIndex(pd.to_datetime(x, unit=unit, utc=True))
    else:
        text = column.astype("string")
        if text.isna().any():
            raise DataError(f"{where}: {int(text.isna().sum())} empty timestamps (first at row {int(np.flatnonzero(text.isna())[0])})")
        parsed = None
        with warnings.catch_warnings():  # mixed offsets: handled below
            warnings.simplefilter("ignore", FutureWarning)
            try:
                parsed = pd.to_datetime(text, format="ISO8601")
            except (ValueError, TypeError):
                if not _mixed_offsets(text):   # pandas 3 raises on mixed offsets (pandas 2: object dtype)
                    try:
                        parsed = pd.to_datetime(text, format="mixed")
                    except (ValueError, TypeError) as exc:
                        bad = _first_unparseable(text)
                        raise DataError(f"{where}: cannot parse timestamp {bad!r} ({exc})") from exc
        if parsed is None or not pd.api.types.is_datetime64_any_dtype(parsed):  # mixed UTC offsets
            try:
                utc = pd.DatetimeIndex(pd.to_datetime(text, format="ISO8601", utc=True))
            except (ValueError, TypeError) as exc:
                raise DataError(f"{where}: mixed time zones that cannot be reconciled ({exc})") from exc
            zone = None if tz is not None else zone_for_offsets(utc, _offset_minutes(text), prefer=prefer_zones)
            parsed = utc.tz_convert(zone) if zone else utc
        idx = pd.DatetimeIndex(parsed)
    if tz is not None:
        idx = idx.tz_localize(tz) if idx.tz is None else idx.tz_convert(tz)
    return idx


def _offset_minutes(text: pd.Series) -> np.ndarray:
    """UTC offset in minutes written at the end of each ISO timestamp (``Z`` = 0, none = NaN)."""
    m = text.str.extract(r"(Z|[+-]\d\d:?\d\d)$")[0]
    out = np.full(len(text), np.nan)
    has = m.notna().to_numpy()
    vals = m[has].str.replace(":", "", regex=False)
    z = (vals == "Z").to_numpy()
    num = vals.where(~(vals == "Z"), "+0000")
    sign = np.where(num.str[0] == "-", -1, 1)
    out[has] = sign * (num.str[1:3].astype(int).to_numpy() * 60 + num.str[3:5].astype(int).to_numpy())
    out[np.flatnonzero(has)[z]] = 0.0
    return out


def zone_for_offsets(utc: pd.DatetimeIndex, offsets: np.ndarray, max_checks: int = 4000,
                     prefer: list[str] | tuple[str, ...] = ()) -> str | None:
    """An IANA zone whose UTC offsets match ``offsets`` (minutes) at ``utc`` instants, or None.

    ``prefer`` (zones found for earlier series) and :data:`COMMON_ZONES` are tried first, then all others alphabetically (zones that agree on
    the data's offsets give the same local times, so the choice only affects the name).

    Checked at the first and last row of every run of equal offsets (where DST switches).
    """
    from zoneinfo import available_timezones

    ok = ~np.isnan(offsets)
    order = np.argsort(epoch_ns(utc[ok]), kind="stable")
    inst, offs = utc[ok][order], offsets[ok][order]
    if len(inst) == 0:
        return None
    change = np.flatnonzero(np.diff(offs) != 0)
    picks = np.unique(np.concatenate([[0, len(offs) - 1], change, change + 1]))[:max_checks]
    inst, offs = inst[picks], offs[picks]
    naive_utc = inst.tz_localize(None)
    others = sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
    first = list(dict.fromkeys(list(prefer) + list(COMMON_ZONES)))
    candidates = first + [z for z in others if z not in first]
    for zone in candidates:
        try:
            local = inst.tz_convert(zone).tz_localize(None)
        except Exception:  # a zone the platform's tz database cannot load
            continue
        if np.array_equal((epoch_ns(local) - epoch_ns(naive_utc)) // 60_000_000_000, offs.astype(np.int64)):
            return zone
    return None


def _first_unparseable(text: pd.Series) -> str:
    for value in text:
        try:
            pd.Timestamp(value)
        except (ValueError, TypeError):
            return str(value)
    return str(text.iloc[0])


def _numeric(column: pd.Series, *, where: str) -> np.ndarray:
    """Float values; empty cells and NA tokens become NaN, any other text is an error."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    converted = pd.to_numeric(column, errors="coerce")
    bad = converted.isna() & column.notna() & (column.astype("string").str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: non-numeric value {column.iloc[row]!r} at row {row}")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def series_from_frame(df: pd.DataFrame, *, name: str = "data", freq=None, tz: str | None = None,
                      source: str = "") -> list[Series]:
    """Turn a long or wide DataFrame into regular-grid series (see the module docstring).

    Args:
        df: the raw table.
        name: used in error messages and as the id of a single unnamed series.
        freq: grid step for every series (pandas alias or offset); inferred per series when None.
        tz: time zone to localise naive timestamps to / convert aware ones to.
    """
    if df.empty:
        raise DataError(f"{name}: the table has no rows")
    columns = {str(c).strip().lower(): c for c in df.columns}
    time_col = _find(columns, TIME_COLUMNS)
    if time_col is None:
        raise DataError(f"{name}: no time column; expected one of {', '.join(TIME_COLUMNS)} "
                        f"(found: {', '.join(map(str, df.columns))})")
    id_col = _find(columns, ID_COLUMNS)
    value_col = _find(columns, VALUE_COLUMNS)
    step = None if freq is None else parse_freq(freq)
    where = f"{name}: column {time_col!r}"
    out: list[Series] = []
    if id_col is not None:
        if value_col is None:
            raise DataError(f"{name}: long table with id column {id_col!r} has no value column; "
                            f"expected one of {', '.join(VALUE_COLUMNS)}")
        values = _numeric(df[value_col], where=f"{name}: column {value_col!r}")
        ids = df[id_col]
        if ids.isna().any():
            raise DataError(f"{name}: column {id_col!r} has {int(ids.isna().sum())} empty series ids")
        ids = ids.astype(str).to_numpy()
        codes, uniques = pd.factorize(ids, sort=False)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        # One zone per file is the common case; otherwise each series is parsed on its own so
        # that a DST zone found for one series does not shift another (naive) one.
        per_series = _mixed_offsets(df[time_col])
        times = None if per_series else parse_timestamps(df[time_col], where=where, tz=tz)
        zones: list[str] = []
        for j, sid in enumerate(uniques):
            rows = order[bounds[j]:bounds[j + 1]]
            t = (parse_timestamps(df[time_col].iloc[rows], where=f"{where} (series {sid!r})", tz=tz,
                                  prefer_zones=zones) if per_series else times[rows])
            if per_series and t.tz is not None and "/" in str(t.tz) and str(t.tz) not in zones:
                zones.insert(0, str(t.tz))
            out.append(_make(sid, t, values[rows], step, name, source))
        return out
    times = parse_timestamps(df[time_col], where=where, tz=tz)
    value_cols = [c for c in df.columns if c != time_col]
    if not value_cols:
        raise DataError(f"{name}: only a time column {time_col!r}, no values")
    if len(value_cols) == 1 and str(value_cols[0]).strip().lower() in VALUE_COLUMNS:
        values = _numeric(df[value_cols[0]], where=f"{name}: column {value_cols[0]!r}")
        return [_make(Path(name).name.split(".")[0], times, values, step, name, source)]
    for col in value_cols:  # wide
        values = _numeric(df[col], where=f"{name}: column {col!r} (wide table: every non-time column is a series)")
        out.append(_make(str(col), times, values, step, name, source))
    return out


def _make(sid: str, times: pd.DatetimeIndex, values: np.ndarray, step, name: str, source: str) -> Series:
    if len(times.unique()) < 2 and step is None:
        raise DataError(f"{name}: series {sid!r} has fewer than 2 distinct timestamps; "
                        "cannot infer its frequency (pass freq=)")
    try:
        start, freq, grid = to_grid(times, values, step)
    except ValueError as exc:
        raise DataError(f"{name}: series {sid!r}: {exc}") from exc
    return Series(sid, start, freq, grid, source=source or name)


def load_table(path: str | Path, *, freq=None, tz: str | None = None) -> list[Series]:
    """Load a CSV/Parquet file (long or wide) as regular-grid series with NaN gaps.

    Duplicated timestamps are averaged, off-grid timestamps go to the nearest grid point,
    the frequency is inferred per series unless ``freq`` is given, and the time zone of the
    input is kept (or set/converted by ``tz``). Raises :class:`DataError` naming the file and
    column for missing columns, unparseable timestamps or non-numeric values.
    """
    path = Path(path)
    return series_from_frame(read_table(path), name=str(path), freq=freq, tz=tz, source=str(path))
