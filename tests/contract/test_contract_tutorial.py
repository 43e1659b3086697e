"""The spec's tutorial ``FederatedFlow`` runs unchanged apart from its imports.

Around the verbatim flow are tiny stand-ins for what the tutorial notebook defines (``Net``,
``inference``, hyper-parameters, data); ``FedAvg`` is fedloom's own helper.
"""

# ruff: noqa: F541, F841, E501, UP032, RUF015  -- the tutorial flow is kept verbatim

from __future__ import annotations

from copy import deepcopy

import pytest

torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from fedloom import (  # noqa: E402
    Aggregator,
    Collaborator,
    FedAvg,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
)

pytestmark = pytest.mark.timeout(60)

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: threads only cost time (and the box may be busy)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


learning_rate = 0.5
momentum = 0.5
log_interval = 2
batch_size_train = 10


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return F.log_softmax(self.fc(x), dim=1)


def inference(network, test_loader):
    network.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            correct += int((network(data).argmax(dim=1) == target).sum())
    return correct / len(test_loader.dataset)


# ---- the spec's FederatedFlow, verbatim --------------------------------------------------------
class FederatedFlow(FLSpec):

    def __init__(self, model = None, optimizer = None, rounds=3, **kwargs):
        super().__init__(**kwargs)
        if model is not None:
            self.model = model
            self.optimizer = optimizer
        else:
            self.model = Net()
            self.optimizer = optim.SGD(self.model.parameters(), lr=learning_rate,
                                   momentum=momentum)
        self.rounds = rounds

    @aggregator
    def start(self):
        print(f'Performing initialization for model')
        self.collaborators = self.runtime.collaborators
        self.private = 10
        self.current_round = 0
        self.next(self.aggregated_model_validation,foreach='collaborators',exclude=['private'])

    @collaborator
    def aggregated_model_validation(self):
        print(f'Performing aggregated model validation for collaborator {self.input}')
        self.agg_validation_score = inference(self.model,self.test_loader)
        print(f'{self.input} value of {self.agg_validation_score}')
        self.next(self.train)

    @collaborator
    def train(self):
        self.model.train()
        self.optimizer = optim.SGD(self.model.parameters(), lr=learning_rate,
                                   momentum=momentum)
        train_losses = []
        for batch_idx, (data, target) in enumerate(self.train_loader):
          self.optimizer.zero_grad()
          output = self.model(data)
          loss = F.nll_loss(output, target)
          loss.backward()
          self.optimizer.step()
          if batch_idx % log_interval == 0:
            print('Train Epoch: 1 [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
               batch_idx * len(data), len(self.train_loader.dataset),
              100. * batch_idx / len(self.train_loader), loss.item()))
            self.loss = loss.item()
            torch.save(self.model.state_dict(), 'model.pth')
            torch.save(self.optimizer.state_dict(), 'optimizer.pth')
        self.training_completed = True
        self.next(self.local_model_validation)

    @collaborator
    def local_model_validation(self):
        self.local_validation_score = inference(self.model,self.test_loader)
        print(f'Doing local model validation for collaborator {self.input}: {self.local_validation_score}')
        self.next(self.join, exclude=['training_completed'])

    @aggregator
    def join(self,inputs):
        self.average_loss = sum(input.loss for input in inputs)/len(inputs)
        self.aggregated_model_accuracy = sum(input.agg_validation_score for input in inputs)/len(inputs)
        self.local_model_accuracy = sum(input.local_validation_score for input in inputs)/len(inputs)
        print(f'Average aggregated model validation values = {self.aggregated_model_accuracy}')
        print(f'Average training loss = {self.average_loss}')
        print(f'Average local model validation values = {self.local_model_accuracy}')
        self.model = FedAvg([input.model for input in inputs])
        self.optimizer = [input.optimizer for input in inputs][0]
        self.current_round += 1
        if self.current_round < self.rounds:
            self.next(self.aggregated_model_validation, foreach='collaborators', exclude=['private'])
        else:
            self.next(self.end)

    @aggregator
    def end(self):
        print(f'This is the end of the flow')
# ------------------------------------------------------------------------------------------------


def datasets():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x[:90], y[:90]), TensorDataset(x[90:], y[90:])


def shard(dataset, index, n):
    part = deepcopy(dataset)
    part.tensors = tuple(t[index::n] for t in dataset.tensors)
    return part


def callable_to_initialize_collaborator_private_attributes(index, n_collaborators, batch_size,
                                                           train_dataset, test_dataset):
    return {
        "train_loader": DataLoader(shard(train_dataset, index, n_collaborators),
                                   batch_size=batch_size, shuffle=True),
        "test_loader": DataLoader(shard(test_dataset, index, n_collaborators),
                                  batch_size=batch_size, shuffle=True),
    }


def dict_runtime(names, train, test):
    aggregator_ = Aggregator()
    aggregator_.private_attributes = {}
    collaborators = [Collaborator(name=name) for name in names]
    for idx, collaborator_ in enumerate(collaborators):
        collaborator_.private_attributes = callable_to_initialize_collaborator_private_attributes(
            idx, len(collaborators), batch_size_train, train, test)
    return LocalRuntime(aggregator=aggregator_, collaborators=collaborators,
                        backend="single_process")


def callable_runtime(names, train, test):
    collaborators = [
        Collaborator(name=name,
                     private_attributes_callable=callable_to_initialize_collaborator_private_attributes,
                     index=idx, n_collaborators=len(names), train_dataset=train,
                     test_dataset=test, batch_size=batch_size_train)
        for idx, name in enumerate(names)]
    return LocalRuntime(aggregator=Aggregator(), collaborators=collaborators)


@pytest.mark.parametrize(("make", "names"), [
    (dict_runtime, ["Portland", "Seattle", "Chandler"]),
    (callable_runtime, ["intel@lab_5", "New York", "newDelhi$+7"]),
], ids=["dict", "callable"])
def test_spec_tutorial_flow_runs(make, names, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the tutorial saves model.pth / optimizer.pth
    torch.manual_seed(0)
    train, test = datasets()
    flow = FederatedFlow(rounds=2)
    flow.runtime = make(names, train, test)
    flow.run()

    assert flow.current_round == 2
    assert isinstance(flow.model, Net)
    assert flow.private == 10  # excluded from the fan-out, kept by the aggregator
    assert flow.collaborators == names
    assert not hasattr(flow, "training_completed")
    assert not hasattr(flow, "train_loader") and not hasattr(flow, "test_loader")
    assert 0.0 <= flow.aggregated_model_accuracy <= 1.0
    assert flow.local_model_accuracy > 0.7
    assert torch.isfinite(flow.model.fc.weight).all()
    out = capsys.readouterr().out
    for name in names:
        assert f"Performing aggregated model validation for collaborator {name}" in out
    assert out.count("Average training loss") == 2
    assert "This is the end of the flow" in out
    assert (tmp_path / "model.pth").exists()


class AveragingCheckFlow(FederatedFlow):
    """The tutorial flow, with a join that also checks fedloom's FedAvg against a hand average."""

    @aggregator
    def join(self, inputs):
        expected = torch.stack([i.model.fc.weight.detach() for i in inputs]).mean(dim=0)
        averaged = FedAvg([i.model for i in inputs])
        self.max_diff = float((averaged.fc.weight.detach() - expected).abs().max())
        self.inputs_distinct = len({id(i.model) for i in inputs}) == len(inputs)
        self.next(self.end)


def test_fedavg_of_collaborator_models_matches_a_hand_average(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    train, test = datasets()
    flow = AveragingCheckFlow(rounds=1)
    flow.runtime = callable_runtime(["a", "b", "c"], train, test)
    flow.run()
    assert flow.max_diff < 1e-6
    assert flow.inputs_distinct is True
