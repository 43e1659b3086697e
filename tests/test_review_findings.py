"""Review findings: each test shows one defect (found in a review) and that it stays fixed."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import fedloom
from fedloom import (
    Aggregator,
    Collaborator,
    FlowRunError,
    FLSpec,
    LocalRuntime,
    PrivateAttributeError,
    StepFailed,
    aggregator,
    collaborator,
    fedavg,
)
from fedloom.capture import capture_output
from fedloom.cli import main
from fedloom.errors import FedloomError
from fedloom.spec.flowspec import flow_warnings
from fedloom.tasks import TaskRecord
from tests.conftest import NAMES, make_runtime

SECRET = b"SECRET-PAYLOAD-0123456789abcdef!"


def secret_array(index: int, name: str) -> dict[str, Any]:
    """A private array with bytes that are easy to find on disk."""
    return {"secret": np.frombuffer(SECRET, dtype=np.uint8).copy()}


def slow_private(index: int, name: str) -> dict[str, Any]:
    """A private_attributes_callable that loads data for a while (as real ones do)."""
    time.sleep(3)
    return {"shard": np.full(3, float(index))}


# -- flows --------------------------------------------------------------------------------------


class NestedPrivateFlow(FLSpec):
    """A collaborator wraps its private array in a container it sends back."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.bundle = {"data": self.secret}  # the private object itself, one level down
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.received = [bytes(i.bundle["data"]) for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class PrivateStringFlow(FLSpec):
    """A collaborator publishes its private API token (a str) as a public attribute."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.token_copy = self.api_token  # the private object itself
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.tokens = [i.token_copy for i in inputs]
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class FailsInLastCollaboratorFlow(FLSpec):
    def __init__(self, fail: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = fail

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        print(f"training {self.input}")
        if self.fail and self.input == NAMES[-1]:
            raise RuntimeError("out of memory")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class SlowFailFlow(FLSpec):
    """Collaborators fail after a short while (a failed checkpoint write is known by then)."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        time.sleep(0.5)
        if self.input:
            raise RuntimeError("the real problem")
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class PhantomFlow(FLSpec):
    @aggregator
    def start(self):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


def broken_private_attributes() -> dict[str, Any]:
    raise ValueError("the data directory is missing")


STUCK_SECONDS = 60.0  # how long ZombieFlow's stuck chains stay in their step


class ZombieFlow(FLSpec):
    """One collaborator fails at once; the others are still busy when the run stops."""

    def __init__(self, fail: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = fail

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        if self.fail:
            if self.input == NAMES[-1]:
                raise RuntimeError("fast failure")
            time.sleep(STUCK_SECONDS)  # stands for a step that is stuck
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class QuickFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class LockAtFanOutFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.lock = threading.Lock()  # public, and cannot be copied
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class ExcludePrivateFlow(FLSpec):
    """OpenFL-style: the step excludes its private data loader by name."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.loss = 0.5
        self.next(self.join, exclude=["train_loader"])

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class ExcludeBetweenCollaboratorStepsFlow(FLSpec):
    """``train`` holds its optimizer state back from ``validate``; it should still keep it."""

    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.round = 0
        self.history: list[list[bool]] = []
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.had_opt_state = hasattr(self, "opt_state")
        if not self.had_opt_state:
            self.opt_state = f"momentum-of-{self.input}"
        self.next(self.validate, exclude=["opt_state"])

    @collaborator
    def validate(self):
        self.next(self.join)

    @aggregator
    def join(self, inputs):
        self.history.append([i.had_opt_state for i in inputs])
        self.round += 1
        if self.round < 2:
            self.next(self.train, foreach="collaborators")
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        pass


class IncludeDropsInputFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model = 1.0
        self.next(self.join, include=["model"])

    @aggregator
    def join(self, inputs):
        self.senders = [i.input for i in inputs]  # the contract: inputs[0].input
        self.next(self.end)

    @aggregator
    def end(self):
        pass


class TypoInExcludeFlow(FLSpec):
    @aggregator
    def start(self):
        self.collaborators = self.runtime.collaborators
        self.model = 0.0
        self.next(self.train, foreach="collaborators")

    @collaborator
    def train(self):
        self.model = self.model + 1
        self.next(self.join, exclude=["modle"])  # never assigned anywhere in the flow

    @aggregator
    def join(self, inputs):
        self.next(self.end)

    @aggregator
    def end(self):
        pass


# -- 1. private objects nested in public containers ------------------------------------------


def test_private_object_nested_in_a_container_is_not_sent():
    flow = NestedPrivateFlow()
    flow.runtime = make_runtime(collab_private=secret_array)
    with pytest.raises(PrivateAttributeError):
        flow.run()


def test_private_object_nested_in_a_container_is_not_checkpointed(metaflow_client):
    flow = NestedPrivateFlow(checkpoint=True)
    flow.runtime = make_runtime(collab_private=secret_array)
    with contextlib.suppress(PrivateAttributeError):
        flow.run()
    raw = b"".join(p.read_bytes() for p in Path(".metaflow").rglob("*") if p.is_file())
    assert SECRET not in raw


def test_ray_private_object_nested_in_a_container_is_not_sent(ray_cluster):
    flow = NestedPrivateFlow()
    runtime = make_runtime(collab_private=secret_array, backend="ray")
    flow.runtime = runtime
    try:
        with pytest.raises(PrivateAttributeError):
            flow.run()
    finally:
        runtime.shutdown()


# -- 2. immutable private values are exempt from the leak check -------------------------------


def _token(index: int, name: str) -> dict[str, Any]:
    return {"api_token": "".join(["tok-", name, "-", "x" * 20]),  # built at run time
            "raw_key": bytes(range(index, index + 16))}


def test_private_string_assigned_to_a_public_attribute_is_refused():
    flow = PrivateStringFlow()
    flow.runtime = make_runtime(collab_private=_token)
    with pytest.raises(PrivateAttributeError, match=r"fedloom\.share"):
        flow.run()


class SharedOnPurposeFlow(PrivateStringFlow):
    @collaborator
    def train(self):
        self.token_copy = fedloom.share(self.api_token)
        self.key_in_a_tuple = ("label", fedloom.share(self.raw_key))
        self.next(self.join)


class KeyInATupleFlow(PrivateStringFlow):
    @collaborator
    def train(self):
        self.token_copy = {"keys": ("label", self.raw_key)}  # deep inside, but the same object
        self.next(self.join)


def test_private_bytes_inside_a_tuple_is_refused_and_share_publishes_on_purpose():
    flow = KeyInATupleFlow()
    flow.runtime = make_runtime(collab_private=_token)
    with pytest.raises(PrivateAttributeError, match="'raw_key'"):
        flow.run()
    shared = SharedOnPurposeFlow()
    shared.runtime = make_runtime(collab_private=_token)
    shared.run()
    assert shared.tokens == [_token(i, n)["api_token"] for i, n in enumerate(NAMES)]


def test_short_or_name_like_private_text_is_not_mistaken_for_a_leak():
    class Echo(PrivateStringFlow):
        @collaborator
        def train(self):
            self.token_copy = (self.label, self.mode)  # coincidences, not secrets
            self.next(self.join)

    flow = Echo()
    flow.runtime = make_runtime(collab_private=lambda i, n: {"label": "ok", "mode": "training",
                                                             "api_token": "unused"})
    flow.run()
    assert flow.tokens == [("ok", "training")] * len(NAMES)


def test_a_participant_name_among_private_attributes_is_public_anyway():
    class Named(PrivateStringFlow):
        @collaborator
        def train(self):
            self.token_copy = self.site_label  # its own name: public in self.collaborators
            self.next(self.join)

    flow = Named()  # the names are passed to the private-attributes callable, as is common
    flow.runtime = make_runtime(collab_private=lambda i, n: {"site_label": n})
    flow.run()
    assert flow.tokens == list(NAMES)


def test_a_long_name_like_api_token_is_tracked():
    token = "".join(["ghp", "_", "A1b2C3d4E5f6G7h8I9j0"])  # identifier-like, built at run time
    flow = PrivateStringFlow()
    flow.runtime = make_runtime(collab_private=lambda i, n: {"api_token": token + str(i)})
    with pytest.raises(PrivateAttributeError, match="'api_token'"):
        flow.run()


# -- 3. a failing fan-out drops the other collaborators' task records --------------------------


def test_failed_fan_out_keeps_the_other_collaborators_tasks(metaflow_client):
    from metaflow import Step

    flow = FailsInLastCollaboratorFlow(checkpoint=True)
    flow.runtime = make_runtime()
    with pytest.raises(StepFailed):
        flow.run()
    tasks = list(Step(f"FailsInLastCollaboratorFlow/{flow._run_id}/train"))
    recorded = sorted((t.metadata_dict["participant"], bool(t.successful)) for t in tasks)
    assert recorded == sorted([(NAMES[0], True), (NAMES[1], True), (NAMES[2], False)])


# -- 4. a checkpoint write error hides the step failure and skips finishing the run ----------


def test_checkpoint_write_error_does_not_hide_the_step_failure(metaflow_client, monkeypatch):
    from fedloom.checkpoint.metaflow_store import MetaflowStore

    original = MetaflowStore.write_task

    def flaky_write(self: Any, step: str, *args: Any, **kwargs: Any) -> None:
        if step == "start":
            raise OSError("disk quota exceeded")
        original(self, step, *args, **kwargs)

    monkeypatch.setattr(MetaflowStore, "write_task", flaky_write)
    flow = SlowFailFlow(checkpoint=True)
    flow.runtime = make_runtime()
    with pytest.raises(StepFailed):
        flow.run()
    report = Path(".metaflow") / "SlowFailFlow" / str(flow._run_id) / "fedloom-run.html"
    assert report.is_file()


# -- 5. a run that fails before it starts leaves a phantom checkpoint run --------------------


def test_setup_failure_leaves_no_phantom_checkpoint_run(metaflow_client):
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    flow = PhantomFlow(checkpoint=True)
    flow.runtime = LocalRuntime(
        aggregator=Aggregator(private_attributes_callable=broken_private_attributes),
        collaborators=[Collaborator(name=NAMES[0])])
    with pytest.raises(FedloomError):  # a ParticipantError
        flow.run()
    try:
        runs = [r.id for r in Flow("PhantomFlow")]
    except MetaflowNotFound:
        runs = []
    assert runs == []


# -- 6. fx run show calls a failed run "unfinished" -----------------------------------------


def test_fx_run_show_reports_a_failed_run_as_failed(metaflow_client):
    from fedloom.checkpoint.report import report_from_metaflow

    flow = FailsInLastCollaboratorFlow(checkpoint=True)
    flow.runtime = make_runtime()
    with pytest.raises(StepFailed):
        flow.run()
    assert report_from_metaflow("FailsInLastCollaboratorFlow", flow._run_id).status == "failed"


# -- 7. Ray: a failed fan-out leaves the other chains running; the next run waits for them ----


def test_ray_failed_run_does_not_leave_chains_running(ray_cluster):
    runtime = make_runtime(backend="ray", num_actors=len(NAMES))
    flow = ZombieFlow()
    flow.runtime = runtime
    try:
        started = time.monotonic()  # the stuck chains stay in their step past this + STUCK
        with pytest.raises(StepFailed):
            flow.run()
        flow.fail = False
        flow.run()
        # Over before the stuck chains could have left their step: nobody waited for them.
        assert time.monotonic() - started < STUCK_SECONDS
    finally:
        runtime.shutdown()


# -- 8. Ray: a slow private_attributes_callable is reported as missing resources -------------


def test_ray_slow_private_attributes_callable_is_not_blamed_on_resources(ray_cluster):
    runtime = make_runtime(backend="ray", collab_private=slow_private, actor_start_timeout=1.0)
    flow = QuickFlow()
    flow.runtime = runtime
    try:
        flow.run()  # a data loader that takes 3 s is normal; failing is acceptable only ...
    except FlowRunError as err:
        assert "waiting for resources" not in str(err)  # ... with a message that says why
    finally:
        runtime.shutdown()


# -- 9. an uncopyable public attribute at a fan-out is a bare TypeError ----------------------


def test_uncopyable_public_attribute_at_fan_out_names_step_and_attribute():
    flow = LockAtFanOutFlow()
    flow.runtime = make_runtime()
    with pytest.raises(FlowRunError) as info:
        flow.run()
    assert "lock" in str(info.value) and "start" in str(info.value)


# -- 10. excluding a private attribute gives a misleading error ------------------------------


def test_excluding_a_private_attribute_is_explained():
    flow = ExcludePrivateFlow()
    flow.runtime = make_runtime(collab_private=lambda i, n: {"train_loader": [i]})
    try:
        flow.run()  # a no-op exclude (OpenFL ports write this) would be fine ...
    except FlowRunError as err:
        assert "private" in str(err).split("Attributes present")[0]  # ... or a message saying so


# -- 11. collaborator -> collaborator exclude loses the attribute for good --------------------


def test_exclude_between_collaborator_steps_keeps_the_attribute_on_the_collaborator():
    flow = ExcludeBetweenCollaboratorStepsFlow()
    flow.runtime = make_runtime()
    flow.run()
    assert flow.history == [[False] * len(NAMES), [True] * len(NAMES)]


# -- 12. include= at the join drops `input` --------------------------------------------------


def test_include_keeps_input_for_the_join():
    flow = IncludeDropsInputFlow()
    flow.runtime = make_runtime()
    flow.run()
    assert flow.senders == NAMES


# -- 13. a name never set anywhere is not caught before the run -------------------------------


def test_exclude_name_never_assigned_is_flagged_before_running(caplog):
    # A warning, not a refusal: helpers outside the class may set attributes too, and the run
    # still stops with a clear error if the name is really missing when the step goes on.
    warnings = flow_warnings(TypoInExcludeFlow)
    assert any("'modle'" in str(w) and "Did you mean 'model'?" in str(w) for w in warnings)
    assert TypoInExcludeFlow.flow_check() == []


# -- 14. captured streams are not file-like enough -------------------------------------------


def test_captured_stdout_looks_like_a_text_stream():
    before = sys.stdout.encoding
    with capture_output(passthrough=True):
        encoding = sys.stdout.encoding
    assert isinstance(before, str)
    assert encoding == before


# -- 15. the recorder scans every pending write on every record -------------------------------


def test_recording_a_fan_out_is_linear_in_its_tasks(metaflow_client, monkeypatch):
    from fedloom.checkpoint.metaflow_store import MetaflowStore
    from fedloom.checkpoint.recorder import MetaflowRecorder
    from fedloom.spec.flowspec import graph_of

    release = threading.Event()
    ids = iter(range(1, 10**6))
    monkeypatch.setattr(MetaflowStore, "new_task_id", lambda self, step: str(next(ids)))
    # Writers finish at once here: the recorder bounds its queue, so blocked writers would
    # (rightly) push back on record() itself.
    monkeypatch.setattr(MetaflowStore, "write_task", lambda self, *a, **k: None)
    recorder = MetaflowRecorder(graph_of(QuickFlow), "1700000000000001")
    calls = 0
    done = concurrent.futures.Future.done

    def counting_done(self: concurrent.futures.Future[Any]) -> bool:
        nonlocal calls
        calls += 1
        return done(self)

    monkeypatch.setattr(concurrent.futures.Future, "done", counting_done)
    tasks = 400  # one fan-out of 400 collaborators whose writes are still queued
    try:
        for _ in range(tasks):
            recorder.record(TaskRecord("train", NAMES[0], 0.0, 0.0))
    finally:
        release.set()
        monkeypatch.setattr(concurrent.futures.Future, "done", done)
        recorder.finish(ok=False)
    assert calls <= 10 * tasks


# -- 16. shutdown() does not make the aggregator's private attributes again ------------------


def test_shutdown_makes_the_aggregators_private_attributes_again():
    made: list[int] = []

    def agg_private() -> dict[str, Any]:
        made.append(1)
        return {"key": object()}

    runtime = LocalRuntime(aggregator=Aggregator(private_attributes_callable=agg_private),
                           collaborators=[Collaborator(name=n) for n in NAMES])
    flow = QuickFlow()
    flow.runtime = runtime
    flow.run()
    runtime.shutdown()
    flow.run()
    assert len(made) == 2


# -- 17. the report page runs JavaScript from a CDN -----------------------------------------


def test_report_page_loads_no_third_party_code():
    from fedloom.checkpoint.report import RunReport

    page = RunReport("F", "1", True, graph_mermaid="flowchart TD").to_html()
    assert "https://" not in page


# -- 18. fx flow check stops at the first broken flow ----------------------------------------


BROKEN_FLOWS = textwrap.dedent("""
    from fedloom import FLSpec, aggregator

    class FirstBroken(FLSpec):
        @aggregator
        def start(self):
            self.next(self.nowhere)

        @aggregator
        def end(self):
            pass

    class SecondBroken(FLSpec):
        @aggregator
        def start(self):
            pass
""")


def test_fx_flow_check_reports_every_broken_flow(tmp_path):
    path = tmp_path / "two_flows.py"
    path.write_text(BROKEN_FLOWS)
    result = CliRunner().invoke(main, ["flow", "check", str(path)])
    assert result.exit_code == 1
    assert "FirstBroken" in result.output and "SecondBroken" in result.output


# -- 19. fedavg accumulates low-precision arrays in their own precision ----------------------


def test_fedavg_of_identical_float16_arrays_is_that_array():
    value = np.full(3, 0.1, dtype=np.float16)
    averaged = fedavg([value] * 1000)
    assert averaged.dtype == np.float16
    np.testing.assert_allclose(averaged.astype(np.float32), value.astype(np.float32), rtol=2e-3)
