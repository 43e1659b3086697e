"""FederatedRuntime's errors before and while a flow runs: they name what is wrong and how to
fix it, as LocalRuntime's do."""

from __future__ import annotations

import pytest

from fedloom import Aggregator, Collaborator, LocalRuntime
from fedloom.errors import ParticipantError
from fedloom.runtime.federated import FederatedRuntime

DIRECTOR = {"director_node_fqdn": "localhost", "director_port": 1}


def test_duplicate_collaborator_names_are_refused_naming_them_as_locally() -> None:
    with pytest.raises(ParticipantError, match=r"unique; repeated: \['a', 'b'\]"):
        FederatedRuntime(collaborators=["a", "b", "c", "b", "a"], director=DIRECTOR, tls=False)
    with pytest.raises(ParticipantError, match=r"unique; repeated: \['a'\]"):
        LocalRuntime(aggregator=Aggregator(),
                     collaborators=[Collaborator(name="a"), Collaborator(name="a")])
