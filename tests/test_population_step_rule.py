"""Step rules (soap.population.step_rules): a member of method r with step_rule q sends r's error direction
at q's per-layer size. Against a float64 numpy step written from the definition, against the same
member trained alone, against the plain rule when q = r, and the runs table's contract for its rows."""

import numpy as np
import pandas as pd
import pytest
import torch

from soap.config import ConfigError, Member, TrainConfig
from soap.nn import initial_parameters
from soap.population import PopulationMLP
from soap.rules import refresh_due
from soap.tables import TableError, effective_lr, validate_runs

from helpers import DATA, PLAIN, SIZES, train

LR = 0.3


def reference_step(weights, biases, direction_B, step_B, x, y, lr):
    """One sgd step of a tanh MLP in numpy: r's chain through direction_B, q's through step_B (both
    plain, from the output error), each hidden delta rescaled to q's norm over (batch, units), the
    output layer's error left as it is. weights[l] (out, in); returns new weights and biases."""
    acts = [x]
    for layer, (w, b) in enumerate(zip(weights, biases)):
        a = acts[-1] @ w.T + b
        acts.append(np.tanh(a) if layer < len(weights) - 1 else a)
    p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    error = (p - np.eye(p.shape[1])[y]) / len(y)
    deltas = [None] * len(weights)
    deltas[-1] = r = q = error
    for layer in reversed(range(len(weights) - 1)):  # hidden layer `layer` is weight layer layer + 1's input
        h = acts[layer + 1]
        r = (1 - h**2) * (r @ direction_B[layer + 1])
        q = (1 - h**2) * (q @ step_B[layer + 1])
        deltas[layer] = r * np.linalg.norm(q) / np.linalg.norm(r)
    return ([w - lr * d.T @ a for w, d, a in zip(weights, deltas, acts[:-1])],
            [b - lr * d.sum(0) for b, d in zip(biases, deltas)])


def feedback_of(rule, weights):
    """A rule's B per layer on these weights, from its definition (soap.rules), in numpy."""
    fa = [layer.feedback.double().numpy() for layer in initial_parameters(SIZES, 7)]
    return {"bp": weights, "sign": [np.sign(w) for w in weights], "fa": fa,
            "usf": [np.sign(w) / np.sqrt(3 * w.shape[1]) for w in weights]}[rule]


def batch(step):
    rows = slice(48 * step, 48 * (step + 1))
    return DATA.train_x[rows].double(), DATA.train_y[rows]


def stepped_model(method, step_rule, steps=1):
    """A float64 population of one member after `steps` steps, each followed by a refresh of every
    periodic B (so sign's B is sign(W) from the first refresh on)."""
    model = PopulationMLP(SIZES, [Member(method, LR, 7, step_rule=step_rule)], "tanh", torch.device("cpu"),
                          dtype=torch.float64)
    for step in range(steps):
        x, y = batch(step)
        model.train_step(x[None], y[None], torch.tensor([LR], dtype=torch.float64))
        model.refresh(np.array([True]))
    return model


@pytest.mark.parametrize("method, step_rule", [("bp", "sign"), ("sign", "bp"), ("fa", "bp"), ("bp", "usf")])
def test_a_step_is_the_methods_direction_at_the_step_rules_size_at_every_layer(method, step_rule):
    model = stepped_model(method, step_rule)  # after a refresh: sign's B is sign(W), not the FA matrix
    weights = [w[0].numpy().copy() for w in model.weights]
    biases = [b[0].numpy().copy() for b in model.biases]
    x, y = batch(1)
    model.train_step(x[None], y[None], torch.tensor([LR], dtype=torch.float64))
    args = (weights, biases, feedback_of(method, weights), feedback_of(step_rule, weights), x.numpy(), y.numpy())
    new_w, new_b = reference_step(*args, LR)
    for layer in range(len(weights)):
        # float64 throughout: the two differ by summation order and the CPU's tanh (2 sigmoid(2a) - 1)
        np.testing.assert_allclose(model.weights[layer][0].numpy(), new_w[layer], rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.biases[layer][0].numpy(), new_b[layer], rtol=0, atol=1e-12)
    # the sizes matter: the plain method's step (q = r) is another one at both hidden layers
    plain_w, _ = reference_step(weights, biases, feedback_of(method, weights), feedback_of(method, weights),
                                x.numpy(), y.numpy(), LR)
    for layer in range(2):
        assert np.abs(plain_w[layer] - new_w[layer]).max() > 1e-4, layer


def test_bp_at_signs_steps_logs_signs_gains_on_its_own_states():
    # bp@sign's logged norm ratio against bp is sign's, measured on bp@sign's weights and batch: the
    # ratio that defines feedback_gain, per hidden layer; its direction is bp's (cosine 1)
    model = stepped_model("bp", "sign", steps=4)
    weights = [w[0].numpy() for w in model.weights]
    x, y = batch(5)
    logged = model.alignment(x[None], y[None])
    acts = [x.numpy()]
    for layer, (w, b) in enumerate(zip(weights, model.biases)):
        a = acts[-1] @ w.T + b[0].numpy()
        acts.append(np.tanh(a) if layer < 2 else a)
    p = np.exp(acts[-1] - acts[-1].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    bp = sign = (p - np.eye(3)[y.numpy()]) / len(y)
    for layer in (1, 0):
        bp = (1 - acts[layer + 1]**2) * (bp @ weights[layer + 1])
        sign = (1 - acts[layer + 1]**2) * (sign @ np.sign(weights[layer + 1]))
        gain = np.linalg.norm(sign) / np.linalg.norm(bp)
        assert logged[f"norm_ratio_l{layer}"].item() == pytest.approx(gain, rel=1e-10)
        assert logged[f"cos_l{layer}"].item() == pytest.approx(1.0, abs=1e-12)
        assert gain > 2  # sign's gain: far from bp's 1


# Several rules in one population: plain rules, r@q and q@r, rules with other paths (DFA's direct
# signals, Kolen-Pollack's coupled B) on either side where they can be, on two seeds. The step rule's
# members of a seed are not consecutive, so they are gathered; alone, each is a view.
CROSSED = [("bp", "bp"), ("sign", "sign"), ("bp", "sign"), ("sign", "bp"), ("fa", "usf"), ("usf", "fa"),
           ("dfa", "bp"), ("bp", "dfa"), ("kolen_pollack", "sign"), ("stale_bp", "frsf")]
MEMBERS = [{"method": method, "lr": lr, "seed": seed, "step_rule": step}
           for seed, lr in [(0, 0.2), (1, 0.1)] for method, step in CROSSED]


@pytest.fixture(scope="module")
def crowd():
    return train(members=MEMBERS, epochs=1.0)


def test_members_with_step_rules_train_in_a_crowd_as_alone(crowd):
    runs = crowd.runs.set_index("run_id")
    for member in MEMBERS:
        alone = train(members=[member], epochs=1.0).runs.iloc[0]
        run = runs.loc[alone["run_id"]]
        for column in ["val_loss", "test_loss", "final_train_loss", "feedback_gain_l1", "feedback_gain_l2"]:
            assert run[column] == pytest.approx(alone[column], rel=1e-4), (alone["run_id"], column)
        assert run["test_acc"] == pytest.approx(alone["test_acc"], abs=1e-6), alone["run_id"]


def test_step_rule_runs_have_their_column_a_suffixed_id_and_their_step_rules_gains(crowd):
    runs = crowd.runs
    assert runs["step_rule"].tolist() == [m["step_rule"] for m in MEMBERS]
    assert runs["run_id"].is_unique
    ids = dict(zip(zip(runs["method"], runs["step_rule"], runs["seed"]), runs["run_id"]))
    assert ids["bp", "sign", 0] == "synthetic-grid-bp-lr0.2-s0-atsign"
    assert ids["bp", "bp", 0] == "synthetic-grid-bp-lr0.2-s0"
    gains = runs.set_index(["method", "step_rule", "seed"])["feedback_gain"]
    # bp at sign's sizes has a sign-sized gain (a mean with the points before the first refresh, ~1);
    # sign at bp's sizes, bp's
    for seed in (0, 1):
        assert gains["bp", "sign", seed] > 1.5 and gains["sign", "sign", seed] > 1.5
        assert gains["sign", "bp", seed] == pytest.approx(1.0, abs=1e-5)
    assert not runs["diverged"].any()


def test_a_step_rule_equal_to_the_method_changes_no_number(crowd):
    # (r, q = r) is r bit for bit, in one population of several rules; and the rows of the crowd's
    # plain members are the plain members' trained without any step-rule member beside them
    members = [{"method": m, "lr": 0.2, "seed": s} for m in ["bp", "sign", "fa", "usf", "dfa", "kolen_pollack"]
               for s in (0, 1)]
    plain = train(members=members)
    same = train(members=[{**m, "step_rule": m["method"]} for m in members])
    pd.testing.assert_frame_equal(same.runs, plain.runs, check_exact=True)
    pd.testing.assert_frame_equal(same.curves, plain.curves, check_exact=True)
    assert (plain.runs["step_rule"] == plain.runs["method"]).all()
    # and costs nothing: the model has no step rules to apply (a q = r member rescaled to its own norm
    # would agree to the bit as well, x / x being 1, at the price of a second chain)
    config = TrainConfig.from_dict({**PLAIN, "members": [{**m, "step_rule": m["method"]} for m in members]})
    assert PopulationMLP(SIZES, config.population(), "tanh", torch.device("cpu")).step_rules is None


def test_step_rules_keep_a_captured_steps_contract_and_freeze_a_diverged_member():
    members = [{"method": "bp", "lr": 0.2, "seed": 0, "step_rule": "sign"},
               {"method": "fa", "lr": 0.2, "seed": 0},
               {"method": "sign", "lr": 0.1, "seed": 1, "step_rule": "bp"},
               {"method": "bp", "lr": 400.0, "seed": 1, "step_rule": "sign"}]  # diverges
    config = TrainConfig.from_dict({**PLAIN, "members": members})
    from soap.population import train_population

    plain = train_population(config, DATA, progress=False)
    captured = train_population(config, DATA, progress=False, capture=True)
    assert plain.runs["diverged"].tolist() == [False, False, False, True]
    pd.testing.assert_frame_equal(captured.runs, plain.runs, check_exact=True)
    pd.testing.assert_frame_equal(captured.curves, plain.curves, check_exact=True)


def test_step_rules_follow_their_own_refresh_schedule():
    # sign as a step rule keeps the FA matrix until the member's first refresh (96 examples: after the
    # second step), then holds sign(W) of that refresh until the next (after the fourth)
    model = PopulationMLP(SIZES, [Member("bp", LR, 7, refresh_period=96, step_rule="sign")], "tanh",
                          torch.device("cpu"))
    fa = [layer.feedback for layer in initial_parameters(SIZES, 7)]
    q = model.step_rules.feedback.matrices
    for step in range(4):
        x, y = batch(step)
        model.train_step(x.float()[None], y[None], torch.tensor([LR]))
        model.refresh(refresh_due(48 * step, 48 * (step + 1), np.array([96])))
        if step == 0:
            assert all(torch.equal(q[l][0], fa[l]) for l in (1, 2))
        if step in (1, 3):
            assert all(torch.equal(q[l][0], torch.sign(model.weights[l][0])) for l in (1, 2))
            refreshed = [q[l][0].clone() for l in (1, 2)]
        if step == 2:
            assert all(torch.equal(q[l][0], b) for l, b in zip((1, 2), refreshed))
    assert not all(torch.equal(a, b) for a, b in zip(refreshed, fa[1:]))


@pytest.mark.parametrize("change, message", [
    ({"optimizer": "adam"}, r"members: bp with step_rule sign \(seed 0\): a step rule needs optimizer sgd, got adam"),
    ({"lr": [0.4, 0.2, 0.1]}, r"bp with step_rule sign \(seed 0\): a step rule takes one lr for every layer"),
    ({"step_rule": "kolen_pollack"}, r"kolen_pollack cannot be a step rule: its B is trained by its own update"),
    ({"method": "so_bp"}, r"so_bp with step_rule sign \(seed 0\): so_ rules take no step rule"),
    ({"step_rule": "so_fa"}, r"so_ rules take no step rule"),
    ({"step_rule": "signs"}, r"members\.0\.step_rule: 'signs' is not one of"),
])
def test_a_step_rule_it_cannot_apply_is_one_line(change, message):
    member = {"method": "bp", "lr": 0.1, "seed": 0, "step_rule": "sign"}
    optimizer = change.pop("optimizer", "sgd")
    with pytest.raises(ConfigError, match=message) as error:
        TrainConfig.from_dict({**PLAIN, "optimizer": optimizer, "members": [{**member, **change}]})
    assert "\n" not in str(error.value)


def test_the_model_refuses_a_step_rule_under_another_optimizer():
    with pytest.raises(ConfigError, match=r"a step rule needs optimizer sgd, got momentum"):
        PopulationMLP(SIZES, [Member("bp", 0.1, 0, step_rule="sign")], "tanh", torch.device("cpu"),
                      optimizer="momentum")
    # the same member at its own rule's sizes trains under any optimizer
    PopulationMLP(SIZES, [Member("bp", 0.1, 0, step_rule="bp")], "tanh", torch.device("cpu"), optimizer="momentum")


def test_a_bp_row_at_another_rules_steps_carries_that_rules_gain(crowd):
    runs = crowd.runs
    crossed = (runs["method"] == "bp") & (runs["step_rule"] == "sign")
    validated = validate_runs(runs)
    # its effective lr uses the measured gain, sign's, not bp's 1
    np.testing.assert_allclose(effective_lr(validated)[crossed], runs.loc[crossed, "lr"] * runs.loc[crossed,
                               "feedback_gain"], rtol=1e-12)
    assert (effective_lr(validated)[crossed] > 1.5 * runs.loc[crossed, "lr"]).all()
    # exempt are exactly those rows: a bp row at its own sizes with that gain is still an error
    relabelled = runs.copy()
    relabelled.loc[crossed, "step_rule"] = "bp"
    with pytest.raises(TableError, match=r"bp's feedback_gain must be 1 \(within 0.001\); 2 run\(s\)"):
        validate_runs(relabelled)
    with pytest.raises(TableError, match=r"bp's feedback_gain must be 1"):
        validate_runs(runs.drop(columns="step_rule"))  # without the column, every bp row is plain bp
