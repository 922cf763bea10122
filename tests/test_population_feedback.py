"""The population's feedback (soap.population.feedback): every member's B follows its rule step by step,
and the error signals it sends (DFA's included) match hand computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soap.config import Member
from soap.nn import initial_parameters
from soap.population import PopulationMLP
from soap.seeding import generator

from helpers import DATA, SIZES, train


def test_bp_members_feedback_equals_weights_after_every_step(monkeypatch):
    # B = W must hold after each step itself (not only after alignment(), which syncs): layers >= 1
    # send errors down through B at the next step. The first layer's B sends nothing down.
    checked = []
    original = PopulationMLP.train_step

    def checked_step(self, *args):
        loss = original(self, *args)
        bp = torch.tensor([rule.uses_weight for rule in self.hooks.rules])
        for layer in range(1, len(self.weights)):
            assert torch.equal(self.feedback[layer][bp], self.weights[layer][bp]), layer
            assert not torch.equal(self.feedback[layer][~bp], self.weights[layer][~bp])
        checked.append(True)
        return loss

    monkeypatch.setattr(PopulationMLP, "train_step", checked_step)
    train(members=[{"method": "bp", "lr": 0.3, "seed": 1}, {"method": "fa", "lr": 0.3, "seed": 1},
                   {"method": "bp", "lr": 0.1, "seed": 2}, {"method": "sign", "lr": 0.1, "seed": 1}])
    assert len(checked) == 50


def test_bp_members_apart_in_a_population_train_as_alone_and_stay_aligned():
    # bp members at positions 0 and 2 keep B = W through two separate copies each step
    members = [{"method": "bp", "lr": 0.3, "seed": 1}, {"method": "fa", "lr": 0.3, "seed": 1},
               {"method": "bp", "lr": 0.1, "seed": 2}]
    crowd = train(members=members)
    for position in (0, 2):
        alone = train(members=[members[position]]).runs.iloc[0]
        assert crowd.runs.iloc[position]["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-4)
    bp = crowd.curves[crowd.curves.run_id.isin(crowd.runs.run_id[[0, 2]])].dropna(subset=["angle_l0"])
    assert (bp[["angle_l0", "angle_l1", "angle_l2"]] == 0).all().all()


def test_refresh_period_is_per_member(monkeypatch):
    fired = []
    original = PopulationMLP.refresh
    monkeypatch.setattr(PopulationMLP, "refresh", lambda self, due: (fired.append(due.copy()), original(self, due)))
    result = train(members=[{"method": "sign", "lr": 0.1, "seed": 0},
                            {"method": "sign", "lr": 0.1, "seed": 0, "refresh_period": 960}])
    counts = lambda member: [48 * (step + 1) for step, due in enumerate(fired) if due[member]]  # noqa: E731
    assert counts(0) == [528, 1008, 1536, 2016]  # period 500
    assert counts(1) == [960, 1920]  # period 960, a multiple of the batch: fires exactly at 960k
    assert result.runs["refresh_period"].tolist() == [500, 960]
    assert result.runs["run_id"].nunique() == 2


def test_population_feedback_follows_the_rules_step_by_step():
    """B of every member after each of 4 steps against numpy, from the members' own W."""
    members = [Member("usf", 0.3, 1), Member("frsf", 0.2, 1), Member("brsf", 0.3, 1), Member("brsf", 0.1, 2),
               Member("kolen_pollack", 0.3, 1), Member("kolen_pollack", 0.1, 2)]
    decay = 0.5
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"), decay=decay)
    lr = torch.tensor([m.lr for m in members])
    fa = {seed: [i.feedback.numpy() for i in initial_parameters(SIZES, seed)] for seed in (1, 2)}
    redraws = {seed: generator(seed, "feedback_redraw") for seed in (1, 2)}
    kp = [4, 5]
    start = {p: [(model.feedback[l][p] - model.weights[l][p]).norm().item() for l in range(3)] for p in kp}
    groups = len(model.group_seeds)  # one batch per run of members with one seed (data order)
    x, y = DATA.train_x[:48].expand(groups, -1, -1), DATA.train_y[:48].expand(groups, -1)
    for t in range(5):
        draws = {seed: [torch.empty(o, i).uniform_(-i**-0.5, i**-0.5, generator=redraws[seed])
                        for i, o in zip(SIZES[:-1], SIZES[1:])] for seed in (1, 2)}
        model.complete_feedback()  # a step leaves the first layer's B stale: its readers bring it up to date
        for l in range(3):
            w = model.weights[l].numpy()
            b = model.feedback[l].numpy()
            fan_in = SIZES[l]
            np.testing.assert_allclose(b[0], np.sign(w[0]) / np.sqrt(3 * fan_in), rtol=1e-6)
            np.testing.assert_allclose(b[1], np.abs(fa[1][l]) * np.sign(w[1]), rtol=1e-6)
            np.testing.assert_allclose(b[2], np.abs(draws[1][l].numpy()) * np.sign(w[2]), rtol=1e-6)
            np.testing.assert_allclose(b[3], np.abs(draws[2][l].numpy()) * np.sign(w[3]), rtol=1e-6)
            for p in kp:  # (1 - lr lambda)^t, each member at its own lr
                distance = np.linalg.norm(b[p] - w[p])
                assert distance == pytest.approx(start[p][l] * (1 - members[p].lr * decay) ** t, rel=1e-5)
        model.train_step(x, y, lr)
        model.refresh(np.zeros(len(members), dtype=bool))  # forms the every-step B (no periodic rule here)


def test_alignment_reads_the_first_layers_feedback_formed_from_the_current_weights():
    # Steps leave layer 0's B stale (nothing reads it in training); the alignment metrics must still
    # see B = form(W) of the current W: the angle against a numpy computation after W's signs moved.
    members = [Member("usf", 3.0, 1), Member("frsf", 3.0, 1)]
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"))
    fa = initial_parameters(SIZES, 1)[0].feedback.numpy()
    x, y = DATA.train_x[:48].unsqueeze(0), DATA.train_y[:48].unsqueeze(0)
    start = np.sign(model.weights[0].numpy())
    for _ in range(3):
        model.train_step(x, y, torch.tensor([3.0, 3.0]))
        model.refresh(np.zeros(2, dtype=bool))
    w = model.weights[0].numpy()
    assert (np.sign(w) != start).any()  # signs moved, so a stale B would be another matrix
    angles = model.alignment(x, y)["angle_l0"].numpy()
    for p, formed in enumerate((np.sign(w[0]) / np.sqrt(3 * SIZES[0]), np.abs(fa) * np.sign(w[1]))):
        cos = (formed * w[p]).sum() / np.linalg.norm(formed) / np.linalg.norm(w[p])
        assert angles[p] == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-3)


def test_dfa_error_signals_in_the_population_by_hand():
    members = [Member("dfa", 0.1, 3), Member("fa", 0.1, 3)]
    model = PopulationMLP(SIZES, members, "tanh", torch.device("cpu"))
    inits = initial_parameters(SIZES, 3)
    x, y = DATA.train_x[:20], DATA.train_y[:20]
    acts = model.forward(x)
    e = (torch.softmax(acts[-1], -1) - F.one_hot(y, 3)) / 20
    deltas = model.error_signals(acts, e, model.hooks.path())
    h1, h2 = acts[1][0], acts[2][0]
    torch.testing.assert_close(deltas[1][0], (1 - h2**2) * (e[0] @ inits[2].feedback))
    torch.testing.assert_close(deltas[0][0], (1 - h1**2) * (e[0] @ inits[1].direct))
    fa_delta1 = (1 - h2**2) * (e[1] @ inits[2].feedback)  # fa: the same at the top hidden layer ...
    torch.testing.assert_close(deltas[1][1], fa_delta1)
    torch.testing.assert_close(deltas[0][1], (1 - h1**2) * (fa_delta1 @ inits[1].feedback))  # ... through B below
    angles = model.alignment(x[None], y[None])  # one data order: both members have seed 3
    assert np.isnan(angles["angle_l1"][0].item()) and not np.isnan(angles["angle_l2"][0].item())
