# ruff: noqa  -- the flow below is the spec tutorial verbatim, style and all
"""The Workflow API tutorial flow runs unchanged apart from its imports (and MNIST -> digits).

The flow class below is the spec's ``FederatedFlow`` verbatim; around it are the helpers the
tutorial's notebook defines (Net, inference, FedAvg, hyper-parameters), sized for the 8x8 digits
that ship with scikit-learn since nothing can be downloaded here.
"""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.optim as optim  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from fedloom import (  # noqa: E402
    Aggregator,
    Collaborator,
    FLSpec,
    LocalRuntime,
    aggregator,
    collaborator,
)

learning_rate = 0.1
momentum = 0.9
log_interval = 10
batch_size_train = 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def inference(network, test_loader):
    network.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            pred = network(data).argmax(dim=1)
            correct += int((pred == target).sum())
    return correct / len(test_loader.dataset)


def FedAvg(models):  # the tutorial notebook's own helper
    new_model = models[0]
    state_dicts = [model.state_dict() for model in models]
    state_dict = new_model.state_dict()
    for key in models[1].state_dict():
        state_dict[key] = torch.stack([s[key] for s in state_dicts]).mean(dim=0)
    new_model.load_state_dict(state_dict)
    return new_model


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


def digits_datasets():
    digits = sklearn_datasets.load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    split = int(0.8 * len(y))
    return TensorDataset(x[:split], y[:split]), TensorDataset(x[split:], y[split:])


def callable_to_initialize_collaborator_private_attributes(index, n_collaborators, batch_size,
                                                           train_dataset, test_dataset):
    train = deepcopy(train_dataset)
    test = deepcopy(test_dataset)
    train.tensors = tuple(t[index::n_collaborators] for t in train_dataset.tensors)
    test.tensors = tuple(t[index::n_collaborators] for t in test_dataset.tensors)
    return {
        "train_loader": DataLoader(train, batch_size=batch_size, shuffle=True),
        "test_loader": DataLoader(test, batch_size=batch_size, shuffle=True),
    }


def test_spec_tutorial_flow_trains_on_the_serial_backend(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the tutorial saves model.pth / optimizer.pth in the cwd
    torch.manual_seed(0)
    train_dataset, test_dataset = digits_datasets()
    collaborator_names = ["Portland", "Seattle", "Chandler", "Bangalore"]
    collaborators = [
        Collaborator(name=name,
                     private_attributes_callable=(
                         callable_to_initialize_collaborator_private_attributes),
                     index=idx, n_collaborators=len(collaborator_names),
                     train_dataset=train_dataset, test_dataset=test_dataset,
                     batch_size=batch_size_train)
        for idx, name in enumerate(collaborator_names)
    ]
    aggregator_ = Aggregator()
    aggregator_.private_attributes = {}
    flow = FederatedFlow(rounds=5)
    flow.runtime = LocalRuntime(aggregator=aggregator_, collaborators=collaborators,
                                backend="single_process")
    flow.run()

    assert flow.current_round == 5
    assert flow.local_model_accuracy > 0.8
    assert isinstance(flow.model, Net)
    assert flow.private == 10  # excluded from the fan-out, kept by the aggregator
    assert not hasattr(flow, "train_loader")
    out = capsys.readouterr().out
    assert "Performing aggregated model validation for collaborator Bangalore" in out
    assert "This is the end of the flow" in out
    assert (tmp_path / "model.pth").exists()
    assert np.isfinite(flow.average_loss)
