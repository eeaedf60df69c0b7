"""Fixtures of the fault-injection tests: a private RabbitMQ node, a private memcached, deployments on them
(see :mod:`support.faults`), and the fault matrix's row writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.deploy import REPO, explain, run
from support.faults import FaultDeployments, MatrixRow, PrivateMemcached, PrivateRabbit


@pytest.fixture(scope="session")
def fault_packages() -> None:
    """rabbitmq-server and memcached installed (scripts/services.sh; installs only what is missing)."""
    r = run(["bash", REPO / "scripts" / "services.sh", "ensure_apt_packages", "rabbitmq-server", "memcached"],
            timeout=600)
    if r.returncode != 0:
        pytest.fail(f"rabbitmq-server and memcached packages are required:\n{explain(r)}")


@pytest.fixture(scope="session")
def private_rabbit(fault_packages: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    node = PrivateRabbit(tmp_path_factory.mktemp("rabbit"))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def private_memcached(fault_packages: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMemcached]:
    mc = PrivateMemcached(tmp_path_factory.mktemp("memcached"))
    mc.start()
    yield mc
    mc.stop()


@pytest.fixture
def fault_deployments(private_rabbit: PrivateRabbit, private_memcached: PrivateMemcached,
                      tmp_path: Path) -> Iterator[FaultDeployments]:
    # A test that failed half-way through a fault may have left a service down: bring it back first.
    if not private_rabbit.is_up():
        private_rabbit.stop()
        private_rabbit.start()
    private_memcached.ensure_up()
    ds = FaultDeployments(tmp_path, private_rabbit, private_memcached)
    yield ds
    ds.close()


@pytest.fixture
def matrix() -> Any:
    return MatrixRow
