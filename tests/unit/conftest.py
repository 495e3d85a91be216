"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA's certificate, and a client certificate it signed with its key apart."""
    where = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    client = ca.issue_cert("intent-worker@example.com")
    paths = {"ca": where / "ca.pem", "cert": where / "client.pem", "key": where / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    return paths
