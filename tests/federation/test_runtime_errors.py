"""FederatedRuntime's errors before and while a flow runs: they name what is wrong and how to
fix it, as LocalRuntime's do."""

from __future__ import annotations

import threading

import pytest

from fedloom import Aggregator, Collaborator, LocalRuntime
from fedloom.errors import ParticipantError, TransitionError
from fedloom.runtime.federated import FederatedRuntime
from tests.conftest import SHARED_ENVOYS
from tests.federation.flows_unsendable import LambdaFlow

DIRECTOR = {"director_node_fqdn": "localhost", "director_port": 1}


def test_duplicate_collaborator_names_are_refused_naming_them_as_locally() -> None:
    with pytest.raises(ParticipantError, match=r"unique; repeated: \['a', 'b'\]"):
        FederatedRuntime(collaborators=["a", "b", "c", "b", "a"], director=DIRECTOR, tls=False)
    with pytest.raises(ParticipantError, match=r"unique; repeated: \['a'\]"):
        LocalRuntime(aggregator=Aggregator(),
                     collaborators=[Collaborator(name="a"), Collaborator(name="a")])


FIX = "define it with def at the top level of the flow's module"


def test_a_constructor_attribute_that_cannot_be_sent_is_named_before_anything_is_sent() -> None:
    flow = LambdaFlow(fn=lambda x: x)
    flow.runtime = FederatedRuntime(collaborators=["a"], director=DIRECTOR, tls=False)
    with pytest.raises(TransitionError) as info:
        flow.run()  # refused before connecting: nothing listens on port 1
    message = str(info.value)
    assert message.startswith("public attribute 'fn' cannot be sent to the federation as the "
                              "flow's starting state (cannot encode a lambda for the wire: ")
    assert FIX in message and "Make it a private attribute of its owner" in message
    flow = LambdaFlow(fn=threading.Lock())
    flow.runtime = FederatedRuntime(collaborators=["a"], director=DIRECTOR, tls=False)
    with pytest.raises(TransitionError, match=r"public attribute 'fn' cannot be sent to the "
                       r"federation .*\(TypeError: cannot pickle '_thread.lock' object\)"):
        flow.run()


@pytest.mark.slow
def test_a_lambda_set_in_a_step_is_refused_as_in_the_constructor_naming_it(
        shared_plaintext) -> None:
    # One rule wherever the value was set: what crosses between processes must be encodable,
    # and the error names the attribute and says how to fix it.
    expected = {"start": r"\[step 'start', participant 'aggregator'\] public attribute 'fn' "
                         r"cannot be sent to each collaborator of 'train' \(cannot encode a "
                         r"lambda",
                "train": r"\[step 'train', participant '(envoy_one|New York)'\] public attribute "
                         r"'fn' cannot "
                         r"be sent back to 'join' \(cannot encode a lambda",
                "end": r"public attribute 'fn' cannot be sent back to run\(\) as the flow's "
                       r"final state \(cannot encode a lambda"}
    fed = shared_plaintext.ready()
    for step, message in expected.items():
        flow = LambdaFlow(set_in=step)
        flow.runtime = FederatedRuntime(collaborators=list(SHARED_ENVOYS),
                                        director=fed.director_info(), tls=False)
        with pytest.raises(TransitionError, match=message) as info:
            flow.run()
        assert FIX in str(info.value)
