"""A Prefect server on PostgreSQL under load: a deployment run mapping 200 videos, and a second run beside it.

Figures (wall time, server and PostgreSQL memory, SQLite side by side) are in benchmarks/bench_prefect_postgres.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest

from flows.local_services import (
    build_load_sources,
    create_flow_run,
    database_trouble,
    deploy_all,
    prefect_server,
    run_flow_runs,
    write_load_catalog,
    write_load_config,
)
from pipeline.synthetic.demo import serve_directory

pytestmark = pytest.mark.slow
VIDEOS, SECOND, WORKERS = 200, 10, 4


def _query(url: str, sql: str, *args) -> list:
    """Rows of `sql` on the Prefect database (asyncpg, which Prefect's PostgreSQL support installs)."""
    import asyncpg

    async def fetch() -> list:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _most_at_once(intervals: list[tuple]) -> int:
    """The largest number of (start, end) intervals open at the same instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in events:  # at equal times -1 sorts first: a task ending as the next starts is not overlap
        open_now += step
        most = max(most, open_now)
    return most


def test_the_postgres_fixture_listens_on_loopback_only_and_wants_the_password(postgres):
    import asyncpg

    settings = _query(
        postgres.url, "SELECT current_setting('listen_addresses'), current_setting('unix_socket_directories')"
    )
    assert tuple(settings[0]) == ("127.0.0.1", "")
    password = urlsplit(postgres.url).password
    with pytest.raises(asyncpg.InvalidPasswordError):
        _query(postgres.url.replace(f":{password}@", ":not-the-password@"), "SELECT 1")


def test_a_postgres_backed_server_runs_200_videos_and_a_concurrent_run(postgres, tmp_path: Path):
    sources = tmp_path / "sources"
    names = build_load_sources(sources, VIDEOS)
    config = write_load_config(tmp_path / "load.yaml", workers=WORKERS)
    with serve_directory(sources) as base_url:
        catalogs = {
            "main": write_load_catalog(tmp_path / "main.csv", base_url, names, "load"),
            "second": write_load_catalog(tmp_path / "second.csv", base_url, names[:SECOND], "second"),
        }
        with prefect_server(tmp_path / "home", postgres.url) as server:
            deploy_all(server.env)
            runs = {
                key: create_flow_run(
                    server.env, "curate/slowtv", f"catalog={catalog}", f"data_root={tmp_path / key}", f"config={config}"
                )
                for key, catalog in catalogs.items()
            }
            run_flow_runs(server.env, tmp_path, list(runs.values()), timeout=600)  # fails unless both complete
    assert database_trouble(server.log) == []
    assert not (tmp_path / "home" / "prefect.db").exists()  # the server never fell back to SQLite

    for key, count in (("main", VIDEOS), ("second", SECOND)):
        assert json.loads((tmp_path / key / "dataset.json").read_text())["counts"]["videos"] == {"ok": count}
        videos = pq.read_table(tmp_path / key / "stats" / "videos.parquet").to_pylist()
        assert len(videos) == count and {v["status"] for v in videos} == {"ok"}

    flow_runs = {
        str(r["id"]): r for r in _query(postgres.url, "SELECT id, state_type, start_time, end_time FROM flow_run")
    }
    main, second = flow_runs[runs["main"]], flow_runs[runs["second"]]
    assert main["state_type"] == second["state_type"] == "COMPLETED"
    assert main["start_time"] < second["end_time"] and second["start_time"] < main["end_time"]  # side by side
    curated = _query(
        postgres.url,
        "SELECT start_time, end_time FROM task_run WHERE flow_run_id = $1 AND "
        "name LIKE 'curate-%' AND state_type = 'COMPLETED'",
        main["id"],
    )
    assert len(curated) == VIDEOS
    assert _most_at_once([(r["start_time"], r["end_time"]) for r in curated]) <= WORKERS
    downloads = _query(
        postgres.url,
        "SELECT count(*) FROM task_run WHERE flow_run_id = $1 AND name LIKE 'download-%' AND state_type = 'COMPLETED'",
        main["id"],
    )
    assert downloads[0][0] == VIDEOS
