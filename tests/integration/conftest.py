"""Fixtures of the integration tests: the services, per-test and per-module broker deployments, the shared
source tree. What they hand out is in :mod:`support.deploy`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deploy import DeploymentSet, SourceTree, ensure_services
from support.deploy import weird_tree as build_weird_tree


@pytest.fixture(scope="session")
def services() -> None:
    """RabbitMQ and memcached up on 127.0.0.1 (started when missing); a failure fails the tests."""
    ensure_services()


@pytest.fixture
def deployments(services: None, tmp_path: Path) -> Iterator[DeploymentSet]:
    ds = DeploymentSet(tmp_path)
    yield ds
    ds.close()


@pytest.fixture(scope="module")
def module_deployments(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentSet]:
    ds = DeploymentSet(tmp_path_factory.mktemp("sites"))
    yield ds
    ds.close()


@pytest.fixture(scope="session")
def weird_tree(tmp_path_factory: pytest.TempPathFactory) -> SourceTree:
    """The shared source tree of :func:`support.deploy.weird_tree` (read-only: copies go elsewhere)."""
    return build_weird_tree(tmp_path_factory.mktemp("weird") / "src")
