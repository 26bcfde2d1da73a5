"""The OpenAPI schema tells the truth (issue 11): schemathesis sends schema-valid requests to every
route of a real server on loopback and checks each answer against the schema: no server error, a
documented status, the documented content type, a body matching its documented schema.

503 (no room to start in time, Retry-After) and 504 (the client's own ``timeout`` passed) are this
API's documented answers to load and to a client's deadline, not failures of the server: they are
the statuses not_a_server_error expects besides 2xx-4xx. A 500 fails it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from service_live import Live
from vqp.service import Settings, create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25  # per route: about 30 s on 2 cores


def limits(jobs: Path) -> Settings:
    """Small limits, so that generated requests meet them too (413, 503, 507 are part of the schema)."""
    return Settings(jobs_dir=jobs, max_jobs=4, max_image_bytes=200_000, max_video_bytes=200_000,
                    jobs_quota=2_000_000)


CONFIG = schemathesis.Config.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 503, 504]}}})
SCHEMA = schemathesis.openapi.from_dict(create_app(limits(Path("unused"))).openapi(), config=CONFIG)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


@pytest.fixture(scope="module")
def live(tmp_path_factory, detector):
    with Live(create_app(limits(tmp_path_factory.mktemp("openapi") / "jobs"), detector)) as live:
        yield live


@pytest.mark.parametrize("label", OPERATIONS)
def test_route_conforms_to_its_schema(live, label):
    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=live.url, checks=CHECKS)

    check()


def test_schema_documents_bodies_and_statuses():
    """What schemathesis cannot tell by sampling: raw and multipart bodies, and the statuses of limits."""
    paths = SCHEMA.raw_schema["paths"]
    for path, kind in (("/v1/jpeg", "image"), ("/v1/detect", "image"), ("/v1/jobs", "video")):
        body = paths[path]["post"]["requestBody"]["content"]
        assert {f"{kind}/*", "application/octet-stream", "multipart/form-data"} <= set(body)
        assert {"413", "415", "422", "503"} <= set(paths[path]["post"]["responses"])
    assert "504" in paths["/v1/jpeg"]["post"]["responses"] and "507" in paths["/v1/jobs"]["post"]["responses"]
    assert "Retry-After" in paths["/v1/jpeg"]["post"]["responses"]["503"]["headers"]
    params = {p["name"]: p["schema"] for p in paths["/v1/jobs"]["post"]["parameters"]}
    assert params["codec"]["enum"][0] == "libx264" and "pattern" in params["bitrate"]
    assert {"target_size", "timeout"} <= {p["name"] for p in paths["/v1/jpeg"]["post"]["parameters"]}
    assert "HTTPValidationError" not in str(SCHEMA.raw_schema)
