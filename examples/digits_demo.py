"""A real federated training: collaborators on scikit-learn's digits, FedAvg on the aggregator.

Each collaborator makes its own shard of the data where it lives (a private attribute built by a
``private_attributes_callable``), trains a small numpy MLP on it with plain SGD, and sends back
only the model, its sample count and its metrics. The aggregator averages the models (weighted by
sample counts) and scores the result on a held-out test set that only it holds. Every step logs
its numbers with ``fedloom.log_metric``: the console shows them live under a bar of rounds, and
with ``--checkpoint`` the run's page charts them.

    python examples/digits_demo.py [--rounds 10] [--collaborators 4] [--seed 0]
                                   [--backend single_process|ray] [--checkpoint]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedloom import (
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
    fedavg,
    log_metric,
    log_metrics,
    weighted_mean,
)

Array = NDArray[np.float32]
Labels = NDArray[np.int64]
Params = dict[str, Array]

N_CLASSES = 10
HIDDEN = 32
TEST_FRACTION = 0.2  # of all digits, held out on the aggregator
MAX_COLLABORATORS = 100
LOCAL_VAL_EVERY = 5  # every 5th sample of a collaborator's shard is for its local validation


# -- the model: a one-hidden-layer MLP in plain numpy -------------------------------------------


def init_params(n_features: int, seed: int) -> Params:
    """He-initialised weights, float32 (what travels between participants)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((n_features, HIDDEN)) * np.sqrt(2 / n_features)).astype(
            np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.standard_normal((HIDDEN, N_CLASSES)) * np.sqrt(2 / HIDDEN)).astype(np.float32),
        "b2": np.zeros(N_CLASSES, np.float32),
    }


def forward(params: Params, x: Array) -> tuple[Array, Array]:
    """Hidden activations and class probabilities."""
    hidden = np.maximum(x @ params["w1"] + params["b1"], 0)
    logits = hidden @ params["w2"] + params["b2"]
    logits -= logits.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return hidden, probs


def accuracy(params: Params, x: Array, y: Labels) -> float:
    return float((forward(params, x)[1].argmax(axis=1) == y).mean())


def sgd_epoch(params: Params, x: Array, y: Labels, *, lr: float, batch_size: int,
              rng: np.random.Generator) -> tuple[Params, float]:
    """One epoch of minibatch SGD on cross-entropy; returns new weights and the mean loss.

    Works on a copy so the caller's arrays are never written (they may be read-only views, e.g.
    on the Ray backend)."""
    params = {k: v.copy() for k, v in params.items()}
    order = rng.permutation(len(y))
    losses = []
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]
        hidden, probs = forward(params, xb)
        losses.append(float(-np.log(probs[np.arange(len(yb)), yb] + 1e-12).mean()))
        # Backprop of softmax cross-entropy through the ReLU layer.
        d_logits = probs
        d_logits[np.arange(len(yb)), yb] -= 1
        d_logits /= len(yb)
        d_hidden = (d_logits @ params["w2"].T) * (hidden > 0)
        grads = {"w2": hidden.T @ d_logits, "b2": d_logits.sum(axis=0),
                 "w1": xb.T @ d_hidden, "b1": d_hidden.sum(axis=0)}
        for name, grad in grads.items():
            params[name] -= np.float32(lr) * grad.astype(np.float32)
    return params, float(np.mean(losses))


# -- the data: each participant makes its own part, where it lives ------------------------------


def _digits_split(seed: int) -> tuple[Array, Array, Labels, Labels]:
    """The same stratified train/test split for every participant.
    Pixels are scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    return x_train, x_test, y_train, y_test


def collaborator_private_attributes(index: int, n_collaborators: int,
                                    seed: int) -> dict[str, Any]:
    """This collaborator's shard: every n-th sample of the class-sorted training pool, so each
    shard has every class in the same proportions. Every k-th sample of the shard (still sorted
    by class) is kept back for local validation."""
    x_pool, _, y_pool, _ = _digits_split(seed)
    mine = np.argsort(y_pool, kind="stable")[index::n_collaborators]
    is_val = np.arange(len(mine)) % LOCAL_VAL_EVERY == 0
    train, val = mine[~is_val], mine[is_val]
    return {"train_x": x_pool[train], "train_y": y_pool[train],
            "val_x": x_pool[val], "val_y": y_pool[val],
            # Shuffling state stays on the collaborator and persists across rounds.
            "shuffle_rng": np.random.default_rng([seed, index])}


def aggregator_private_attributes(seed: int, reporter: RoundReporter) -> dict[str, Any]:
    """The held-out test set, and the round reporter: both stay on the aggregator (private
    attributes are never copied to collaborators, so an unpicklable console is fine)."""
    _, x_test, _, y_test = _digits_split(seed)
    return {"test_x": x_test, "test_y": y_test, "reporter": reporter}


# -- reporting: one line per round (the runtime's live bar shows the metrics as they come) ------


class RoundReporter:
    """Prints one line per round, the round's summary; the runtime's own display keeps the bar
    of rounds and the latest metrics below it (at a terminal)."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds

    def round_done(self, round_no: int, global_acc: float, agg_acc: float, local_acc: float,
                   loss: float) -> None:
        self.console.print(
            f"round {round_no:>3}/{self.rounds}  train loss {loss:.4f}  test acc {global_acc:.4f}"
            f"  local val acc {agg_acc:.4f} -> {local_acc:.4f}", highlight=False, soft_wrap=True)


# -- the flow ------------------------------------------------------------------------------------


class DigitsFlow(FLSpec):
    """Federated averaging of a numpy MLP, in the shape of the Workflow API tutorial."""

    def __init__(self, model: Params, rounds: int = 10, lr: float = 0.2, local_epochs: int = 2,
                 batch_size: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.rounds = rounds
        self.lr = lr
        self.local_epochs = local_epochs
        self.batch_size = batch_size

    @aggregator
    def start(self) -> None:
        self.collaborators = self.runtime.collaborators
        self.current_round = 0
        self.history: list[dict[str, float]] = []
        # The metrics history is the aggregator's business: collaborators don't need it.
        self.next(self.aggregated_model_validation, foreach="collaborators", exclude=["history"])

    @collaborator
    def aggregated_model_validation(self) -> None:
        self.agg_validation_score = accuracy(self.model, self.val_x, self.val_y)
        log_metric("val/aggregated_accuracy", self.agg_validation_score)
        self.next(self.train)

    @collaborator
    def train(self) -> None:
        for _ in range(self.local_epochs):
            self.model, self.loss = sgd_epoch(self.model, self.train_x, self.train_y, lr=self.lr,
                                              batch_size=self.batch_size, rng=self.shuffle_rng)
        self.n_samples = len(self.train_y)  # a count, not data: the FedAvg weight
        log_metric("train/loss", self.loss)
        self.next(self.local_model_validation)

    @collaborator
    def local_model_validation(self) -> None:
        self.local_validation_score = accuracy(self.model, self.val_x, self.val_y)
        log_metric("val/local_accuracy", self.local_validation_score)
        # Send back only what the join uses.
        self.next(self.join, include=["model", "n_samples", "loss", "agg_validation_score",
                                      "local_validation_score"])

    @aggregator
    def join(self, inputs: Sequence[Any]) -> None:
        weights = [i.n_samples for i in inputs]
        self.model = fedavg([i.model for i in inputs], weights=weights)
        self.current_round += 1
        record = {
            "round": float(self.current_round),
            "loss": weighted_mean([i.loss for i in inputs], weights),
            "global_accuracy": accuracy(self.model, self.test_x, self.test_y),
            "aggregated_model_accuracy": weighted_mean(
                [i.agg_validation_score for i in inputs], weights),
            "local_model_accuracy": weighted_mean(
                [i.local_validation_score for i in inputs], weights),
        }
        self.history.append(record)
        log_metrics({"test/accuracy": record["global_accuracy"], "train/loss": record["loss"]})
        self.reporter.round_done(self.current_round, record["global_accuracy"],
                                 record["aggregated_model_accuracy"],
                                 record["local_model_accuracy"], record["loss"])
        if self.current_round < self.rounds:
            self.next(self.aggregated_model_validation, foreach="collaborators",
                      exclude=["history"])
        else:
            self.next(self.end)

    @aggregator
    def end(self) -> None:
        self.final_accuracy = self.history[-1]["global_accuracy"]


# -- wiring ---------------------------------------------------------------------------------------


def make_runtime(n_collaborators: int, seed: int, reporter: RoundReporter,
                 backend: str = "single_process") -> LocalRuntime:
    agg = Aggregator(private_attributes_callable=aggregator_private_attributes, seed=seed,
                     reporter=reporter)
    collaborators = [
        Collaborator(name=f"site_{i}", private_attributes_callable=collaborator_private_attributes,
                     index=i, n_collaborators=n_collaborators, seed=seed)
        for i in range(n_collaborators)]
    return LocalRuntime(aggregator=agg, collaborators=collaborators, backend=backend)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=_positive, default=10, help="FedAvg rounds (10)")
    parser.add_argument("--collaborators", type=_positive, default=4,
                        help="number of collaborators, each with its own shard (4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits, init, shuffling")
    parser.add_argument("--backend", choices=["single_process", "ray"], default="single_process",
                        help="run collaborators in this process, or in parallel on Ray")
    parser.add_argument("--checkpoint", action="store_true",
                        help="record every task for the Metaflow client (see fx run show)")
    args = parser.parse_args(argv)
    if args.collaborators > MAX_COLLABORATORS:  # shards would get too small to learn from
        parser.error(f"--collaborators must be at most {MAX_COLLABORATORS}")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> float:
    """Run the demo; returns the final accuracy of the global model on the held-out test set."""
    args = parse_args(argv)
    console = Console()
    n_features = _digits_split(args.seed)[0].shape[1]
    flow = DigitsFlow(model=init_params(n_features, args.seed), rounds=args.rounds,
                      checkpoint=args.checkpoint)
    reporter = RoundReporter(console, args.rounds)
    flow.runtime = make_runtime(args.collaborators, args.seed, reporter, args.backend)
    console.print(f"fedloom digits demo: {args.collaborators} collaborators, {args.rounds} "
                  f"rounds, seed {args.seed}\n  test acc: global model, aggregator's held-out "
                  "set\n  local val acc: each collaborator's validation data, global -> "
                  "local model", highlight=False)
    began = time.perf_counter()
    flow.run()
    elapsed = time.perf_counter() - began
    flow.runtime.shutdown()
    final = float(flow.final_accuracy)
    console.print(f"final global test accuracy: {final:.4f}  ({elapsed:.1f} s)", highlight=False)
    if args.checkpoint:
        console.print(f"recorded as DigitsFlow/{flow._run_id} (fx run show / fx run metrics "
                      f"DigitsFlow); plots of every metric: {run_page('DigitsFlow', flow)}",
                      highlight=False)
    else:
        console.print(f"{len(flow.metrics)} metric values in flow.metrics; with --checkpoint "
                      "the run's page plots them", highlight=False)
    return final


def run_page(flow_name: str, flow: FLSpec) -> str:
    """Where a checkpointed run's page is: .metaflow/<Flow>/<run id>/fedloom-run.html."""
    from fedloom.checkpoint.metaflow_store import default_datastore_root
    from fedloom.checkpoint.recorder import REPORT_FILE

    return str(Path(default_datastore_root()) / flow_name / str(flow._run_id) / REPORT_FILE)


if __name__ == "__main__":
    main()
