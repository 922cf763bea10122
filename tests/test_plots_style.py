"""soap.plots.style: colours and method order come from the rule registry, not from a list of its own."""

import dataclasses

from soap.plots import style
from soap.rules import RULES, get_rule

# rules.py registers the plain rules in this order; each so_ variant follows all of them
REGISTERED = ["bp", "fa", "sign", "sign_scaled", "stale_bp", "usf", "frsf", "brsf", "kolen_pollack", "dfa"]


def test_methods_are_ordered_as_registered_then_so_variants_then_others_alphabetically():
    given = ["zeta", "so_fa", "dfa", "so_bp", "kolen_pollack", "alpha", "fa", "bp"]
    assert style.order_methods(given) == ["bp", "fa", "kolen_pollack", "dfa", "so_bp", "so_fa", "alpha", "zeta"]
    assert style.order_methods(reversed(REGISTERED)) == REGISTERED


def test_a_rule_registered_later_takes_its_registry_place_in_the_order(monkeypatch):
    monkeypatch.setitem(RULES, "newrule", dataclasses.replace(get_rule("fa"), name="newrule"))
    assert style.order_methods(["zzz", "newrule", "so_fa", "bp"]) == ["bp", "so_fa", "newrule", "zzz"]


def test_every_registered_rule_has_its_own_colour_and_the_reference_is_near_black():
    colors = [style.method_color(m) for m in REGISTERED]
    assert len(set(colors)) == len(REGISTERED)
    assert style.method_color("bp") == style.REFERENCE_COLOR == "#222222"
    # the colours of the former fixed table, now given by registry position
    assert (style.method_color("fa"), style.method_color("kolen_pollack"), style.method_color("dfa")) == (
        "#4477AA", "#44AA99", "#999933")


def test_so_variants_share_their_base_colour_and_are_dashed():
    for method in REGISTERED:
        assert style.method_linestyle(method) == "-"
        if not get_rule(method).direct:
            assert style.method_color(f"so_{method}") == style.method_color(method)
            assert style.method_linestyle(f"so_{method}") == "--"


def test_an_unknown_method_gets_a_stable_fallback_colour_and_new_rules_leave_old_colours_alone(monkeypatch):
    before = {m: style.method_color(m) for m in REGISTERED}
    assert style.method_color("bp_matched") in style.FALLBACK_COLORS
    assert style.method_color("bp_matched") == style.method_color("bp_matched")
    monkeypatch.setitem(RULES, "newrule", dataclasses.replace(get_rule("fa"), name="newrule"))
    assert {m: style.method_color(m) for m in REGISTERED} == before


def test_examples_ticks_read_as_thousands_and_millions():
    assert [style.EXAMPLES_FORMATTER(x) for x in (500, 50_000, 1_500_000)] == ["500", "50k", "1.5M"]
