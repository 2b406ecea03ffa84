"""The training rooms one at a time, without a training run: the plan, the run state, the batch
stream, the Ctrl-C request."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from _training import train_config

from qdkit.data.loader import BatchLoader
from qdkit.data.store import open_store
from qdkit.errors import QdkitError
from qdkit.models import MODELS, recipe
from qdkit.train import TrainConfig, check_run
from qdkit.train.batches import epoch_indices, prefetch
from qdkit.train.interrupt import StopRequest
from qdkit.train.state import RunState


def test_a_plan_takes_the_models_recipe_and_creates_nothing(store_path, tmp_path):
    for name in MODELS:
        settings = check_run(train_config(store_path, tmp_path, model=name, epochs=None, lr=None, batch_size=None))
        want = recipe(name)
        assert (settings.lr, settings.batch_size, settings.epochs) == (want["lr"], want["batch_size"], want["epochs"])
    assert not any(tmp_path.iterdir())  # checking a run writes nothing


def test_an_unknown_model_is_refused_not_given_another_recipe(store_path, tmp_path):
    with pytest.raises(QdkitError, match="--model 'resnet': unknown model"):
        TrainConfig(data=str(store_path), model="resnet").resolved()


def test_run_state_round_trips_through_a_checkpoint(tmp_path):
    state = RunState()
    row = {"epoch": 1, "epoch_seconds": 2.5, "val_accuracy": 0.5, "train_loss": 1.0}
    assert state.record(row, patience=None, epochs=3) == (True, False)
    state.cut(4, [10.0, 7.0, 16.0], 1.25)
    back = RunState.from_checkpoint(state.to_checkpoint(), tmp_path / "last.pt", steps_per_epoch=8, epochs=3)
    assert back == state
    broken = state.to_checkpoint()
    broken["progress"]["step_in_epoch"] = 99
    with pytest.raises(QdkitError, match="last.pt"):
        RunState.from_checkpoint(broken, tmp_path / "last.pt", steps_per_epoch=8, epochs=3)


def test_the_batch_stream_is_the_same_global_shuffle_for_any_number_of_ranks(store_path):
    arrays = open_store(store_path).split("train")
    one = BatchLoader(arrays, 32, seed=3)
    whole = list(epoch_indices(one, epoch=2))
    for world in (2, 3):
        ranks = [
            list(epoch_indices(BatchLoader(arrays, 32, seed=3, rank=r, world_size=world), 2)) for r in range(world)
        ]
        for step, rows in enumerate(whole):
            assert np.array_equal(np.concatenate([ranks[r][step] for r in range(world)]), rows)
    assert list(epoch_indices(one, epoch=2, start_step=3))[0].tolist() == whole[3].tolist()  # a resumed epoch


def test_prefetch_keeps_order_and_passes_errors_on():
    batches = [(torch.full((2,), i), torch.tensor([i])) for i in range(5)]
    assert [int(y) for _, y in prefetch(iter(batches), depth=2, pin=False)] == list(range(5))

    def failing():
        yield batches[0]
        raise OSError("disk gone")

    got = prefetch(failing(), depth=2, pin=False)
    next(got)
    with pytest.raises(OSError, match="disk gone"):
        next(got)


def test_first_ctrl_c_requests_a_stop_the_second_aborts():
    said = []
    with StopRequest(said.append) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and "saving last.pt" in said[0]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
