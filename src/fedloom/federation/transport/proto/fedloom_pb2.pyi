from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("total", "offset", "data")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total: int
    offset: int
    data: bytes
    def __init__(self, total: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "fedloom_version", "instance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEDLOOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    fedloom_version: str
    instance: str
    def __init__(self, name: _Optional[str] = ..., fedloom_version: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("session", "health_check_period")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_PERIOD_FIELD_NUMBER: _ClassVar[int]
    session: str
    health_check_period: float
    def __init__(self, session: _Optional[str] = ..., health_check_period: _Optional[float] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class Work(_message.Message):
    __slots__ = ("experiment", "ping", "offer", "chain", "end", "review", "notice")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    ping: float
    offer: Offer
    chain: ChainRequest
    end: str
    review: ReviewRequest
    notice: str
    def __init__(self, experiment: _Optional[str] = ..., ping: _Optional[float] = ..., offer: _Optional[_Union[Offer, _Mapping]] = ..., chain: _Optional[_Union[ChainRequest, _Mapping]] = ..., end: _Optional[str] = ..., review: _Optional[_Union[ReviewRequest, _Mapping]] = ..., notice: _Optional[str] = ...) -> None: ...

class ReviewRequest(_message.Message):
    __slots__ = ("digest", "submitter", "collaborators", "package", "bulk_bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    COLLABORATORS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    BULK_BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    submitter: str
    collaborators: _containers.RepeatedScalarFieldContainer[str]
    package: Chunk
    bulk_bytes: int
    def __init__(self, digest: _Optional[str] = ..., submitter: _Optional[str] = ..., collaborators: _Optional[_Iterable[str]] = ..., package: _Optional[_Union[Chunk, _Mapping]] = ..., bulk_bytes: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("participant", "approved", "reason", "decided_by", "at", "digest", "experiment", "submitter")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    participant: str
    approved: bool
    reason: str
    decided_by: str
    at: float
    digest: str
    experiment: str
    submitter: str
    def __init__(self, participant: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., decided_by: _Optional[str] = ..., at: _Optional[float] = ..., digest: _Optional[str] = ..., experiment: _Optional[str] = ..., submitter: _Optional[str] = ...) -> None: ...

class ReviewOutcome(_message.Message):
    __slots__ = ("accepted", "decisions")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, accepted: _Optional[bool] = ..., decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("digest", "collaborators", "run_id", "checkpoint")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    COLLABORATORS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    collaborators: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    checkpoint: bool
    def __init__(self, digest: _Optional[str] = ..., collaborators: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., checkpoint: _Optional[bool] = ...) -> None: ...

class ChainRequest(_message.Message):
    __slots__ = ("request", "step", "state", "bulk_bytes")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BULK_BYTES_FIELD_NUMBER: _ClassVar[int]
    request: str
    step: str
    state: Chunk
    bulk_bytes: int
    def __init__(self, request: _Optional[str] = ..., step: _Optional[str] = ..., state: _Optional[_Union[Chunk, _Mapping]] = ..., bulk_bytes: _Optional[int] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("session", "experiment", "request", "outcome", "state", "ready", "failure", "decision", "bulk_bytes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    BULK_BYTES_FIELD_NUMBER: _ClassVar[int]
    session: str
    experiment: str
    request: str
    outcome: ChainOutcome
    state: Chunk
    ready: str
    failure: Failure
    decision: Decision
    bulk_bytes: int
    def __init__(self, session: _Optional[str] = ..., experiment: _Optional[str] = ..., request: _Optional[str] = ..., outcome: _Optional[_Union[ChainOutcome, _Mapping]] = ..., state: _Optional[_Union[Chunk, _Mapping]] = ..., ready: _Optional[str] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ..., bulk_bytes: _Optional[int] = ...) -> None: ...

class ChainOutcome(_message.Message):
    __slots__ = ("collaborator", "join_step", "tasks", "failure")
    COLLABORATOR_FIELD_NUMBER: _ClassVar[int]
    JOIN_STEP_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    collaborator: str
    join_step: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    failure: Failure
    def __init__(self, collaborator: _Optional[str] = ..., join_step: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("step", "participant", "stdout", "stderr", "ok", "started_at", "finished_at", "exception", "unpicklable", "attempt", "metrics")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_FIELD_NUMBER: _ClassVar[int]
    UNPICKLABLE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: str
    participant: str
    stdout: str
    stderr: str
    ok: bool
    started_at: float
    finished_at: float
    exception: str
    unpicklable: _containers.RepeatedScalarFieldContainer[str]
    attempt: int
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, step: _Optional[str] = ..., participant: _Optional[str] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., ok: _Optional[bool] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., exception: _Optional[str] = ..., unpicklable: _Optional[_Iterable[str]] = ..., attempt: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value", "round", "time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    round: int
    time: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., round: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "message", "step", "participant", "exc_type", "exc_message", "traceback")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    EXC_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXC_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    step: str
    participant: str
    exc_type: str
    exc_message: str
    traceback: str
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., step: _Optional[str] = ..., participant: _Optional[str] = ..., exc_type: _Optional[str] = ..., exc_message: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("note",)
    NOTE_FIELD_NUMBER: _ClassVar[int]
    note: str
    def __init__(self, note: _Optional[str] = ...) -> None: ...

class Submission(_message.Message):
    __slots__ = ("header", "package")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    header: SubmissionHeader
    package: Chunk
    def __init__(self, header: _Optional[_Union[SubmissionHeader, _Mapping]] = ..., package: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class SubmissionHeader(_message.Message):
    __slots__ = ("collaborators", "digest", "checkpoint", "bulk_bytes", "wait_for_envoys")
    COLLABORATORS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    BULK_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_ENVOYS_FIELD_NUMBER: _ClassVar[int]
    collaborators: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    checkpoint: bool
    bulk_bytes: int
    wait_for_envoys: float
    def __init__(self, collaborators: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., checkpoint: _Optional[bool] = ..., bulk_bytes: _Optional[int] = ..., wait_for_envoys: _Optional[float] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("experiment", "run_id")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    run_id: str
    def __init__(self, experiment: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("experiment", "after", "watch", "follow")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    after: int
    watch: bool
    follow: bool
    def __init__(self, experiment: _Optional[str] = ..., after: _Optional[int] = ..., watch: _Optional[bool] = ..., follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("output", "status", "final_state", "failure", "review", "final_state_bulk", "progress", "outputs")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_BULK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    output: TaskInfo
    status: str
    final_state: Chunk
    failure: Failure
    review: ReviewOutcome
    final_state_bulk: int
    progress: Progress
    outputs: Outputs
    def __init__(self, output: _Optional[_Union[TaskInfo, _Mapping]] = ..., status: _Optional[str] = ..., final_state: _Optional[_Union[Chunk, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., review: _Optional[_Union[ReviewOutcome, _Mapping]] = ..., final_state_bulk: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., outputs: _Optional[_Union[Outputs, _Mapping]] = ...) -> None: ...

class Outputs(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "round", "participants", "at", "previous_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: str
    round: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    at: float
    previous_seconds: float
    def __init__(self, step: _Optional[str] = ..., round: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., at: _Optional[float] = ..., previous_seconds: _Optional[float] = ...) -> None: ...

class EnvoysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnvoyInfo(_message.Message):
    __slots__ = ("name", "online", "last_seen", "experiment", "busy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    name: str
    online: bool
    last_seen: float
    experiment: str
    busy: bool
    def __init__(self, name: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen: _Optional[float] = ..., experiment: _Optional[str] = ..., busy: _Optional[bool] = ...) -> None: ...

class EnvoysReply(_message.Message):
    __slots__ = ("envoys", "visibility")
    ENVOYS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    envoys: _containers.RepeatedCompositeFieldContainer[EnvoyInfo]
    visibility: str
    def __init__(self, envoys: _Optional[_Iterable[_Union[EnvoyInfo, _Mapping]]] = ..., visibility: _Optional[str] = ...) -> None: ...

class ExperimentsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ExperimentRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class ExperimentInfo(_message.Message):
    __slots__ = ("id", "submitter", "flow", "digest", "phase", "detail", "reviewers", "waiting_for", "step", "round", "submitted_at", "started_at", "ended_at", "participants", "reason", "run_id", "checkpoint", "step_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REVIEWERS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    STEP_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    submitter: str
    flow: str
    digest: str
    phase: str
    detail: str
    reviewers: _containers.RepeatedScalarFieldContainer[str]
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    step: str
    round: int
    submitted_at: float
    started_at: float
    ended_at: float
    participants: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    run_id: str
    checkpoint: bool
    step_at: float
    def __init__(self, id: _Optional[str] = ..., submitter: _Optional[str] = ..., flow: _Optional[str] = ..., digest: _Optional[str] = ..., phase: _Optional[str] = ..., detail: _Optional[str] = ..., reviewers: _Optional[_Iterable[str]] = ..., waiting_for: _Optional[_Iterable[str]] = ..., step: _Optional[str] = ..., round: _Optional[int] = ..., submitted_at: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., participants: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., run_id: _Optional[str] = ..., checkpoint: _Optional[bool] = ..., step_at: _Optional[float] = ...) -> None: ...

class ExperimentsReply(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentInfo]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentInfo, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class FetchRunRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("session", "experiment", "request")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    session: str
    experiment: str
    request: str
    def __init__(self, session: _Optional[str] = ..., experiment: _Optional[str] = ..., request: _Optional[str] = ...) -> None: ...

class PendingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PendingReview(_message.Message):
    __slots__ = ("experiment", "submitter", "digest", "flow_class", "since")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FLOW_CLASS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    submitter: str
    digest: str
    flow_class: str
    since: float
    def __init__(self, experiment: _Optional[str] = ..., submitter: _Optional[str] = ..., digest: _Optional[str] = ..., flow_class: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class PendingReply(_message.Message):
    __slots__ = ("pending",)
    PENDING_FIELD_NUMBER: _ClassVar[int]
    pending: _containers.RepeatedCompositeFieldContainer[PendingReview]
    def __init__(self, pending: _Optional[_Iterable[_Union[PendingReview, _Mapping]]] = ...) -> None: ...

class ShowRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class ShowReply(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("experiment", "approve", "reason", "digest")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    approve: bool
    reason: str
    digest: str
    def __init__(self, experiment: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("ended",)
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ended: int
    def __init__(self, ended: _Optional[int] = ...) -> None: ...

class EnvoyState(_message.Message):
    __slots__ = ("name", "online", "since", "address", "last_seen", "experiment", "cert_expiry", "first_seen")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    CERT_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    online: bool
    since: float
    address: str
    last_seen: float
    experiment: str
    cert_expiry: float
    first_seen: float
    def __init__(self, name: _Optional[str] = ..., online: _Optional[bool] = ..., since: _Optional[float] = ..., address: _Optional[str] = ..., last_seen: _Optional[float] = ..., experiment: _Optional[str] = ..., cert_expiry: _Optional[float] = ..., first_seen: _Optional[float] = ...) -> None: ...

class DirectorState(_message.Message):
    __slots__ = ("address", "envoys", "experiments", "settings_json")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ENVOYS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    address: str
    envoys: _containers.RepeatedCompositeFieldContainer[EnvoyState]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentInfo]
    settings_json: str
    def __init__(self, address: _Optional[str] = ..., envoys: _Optional[_Iterable[_Union[EnvoyState, _Mapping]]] = ..., experiments: _Optional[_Iterable[_Union[ExperimentInfo, _Mapping]]] = ..., settings_json: _Optional[str] = ...) -> None: ...

class CollaboratorState(_message.Message):
    __slots__ = ("experiment", "phase", "pid", "alive", "exit_code", "last_step", "last_step_at")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_AT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    phase: str
    pid: int
    alive: bool
    exit_code: int
    last_step: str
    last_step_at: float
    def __init__(self, experiment: _Optional[str] = ..., phase: _Optional[str] = ..., pid: _Optional[int] = ..., alive: _Optional[bool] = ..., exit_code: _Optional[int] = ..., last_step: _Optional[str] = ..., last_step_at: _Optional[float] = ...) -> None: ...

class EnvoyNodeState(_message.Message):
    __slots__ = ("director", "connection", "since", "error", "experiments")
    DIRECTOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    director: str
    connection: str
    since: float
    error: str
    experiments: _containers.RepeatedCompositeFieldContainer[CollaboratorState]
    def __init__(self, director: _Optional[str] = ..., connection: _Optional[str] = ..., since: _Optional[float] = ..., error: _Optional[str] = ..., experiments: _Optional[_Iterable[_Union[CollaboratorState, _Mapping]]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("role", "name", "pid", "started_at", "version", "director", "envoy")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIRECTOR_FIELD_NUMBER: _ClassVar[int]
    ENVOY_FIELD_NUMBER: _ClassVar[int]
    role: str
    name: str
    pid: int
    started_at: float
    version: str
    director: DirectorState
    envoy: EnvoyNodeState
    def __init__(self, role: _Optional[str] = ..., name: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., version: _Optional[str] = ..., director: _Optional[_Union[DirectorState, _Mapping]] = ..., envoy: _Optional[_Union[EnvoyNodeState, _Mapping]] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
