"""The report's figures: stem, title and caption of each, in the report's order.

The captions are also in workflow/report/<stem>.rst for Snakemake's report; tests check that the two
sets of stems agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FigureSpec:
    stem: str  # file name without suffix, under figures_dir; also the caption file's name
    title: str
    caption: str


# The order here is the order in the report.
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig01_bp_vs_fa", "Feedback alignment learns more slowly than backprop",
               "Training loss (EMA) against examples seen for bp and fa, both at bp's tuned learning "
               "rate (grid runs at the shared lr); mean and 95% CI over seeds. The dashed line is the "
               "target loss. The box gives how many times bp's examples fa's mean curve takes to cross "
               "it here, and the analysis's ratio of median examples to target (from the runs it names)."),
    FigureSpec("fig02_fixed_lr_curves", "The naive comparison: every method at one learning rate",
               "Training loss (EMA) of every method at the shared nominal learning rate, chosen for "
               "bp; mean and 95% CI over seeds. This is the write-up's comparison."),
    FigureSpec("fig03_lr_response", "Learning-rate response",
               "Final test loss against nominal learning rate on the grid runs; mean and 95% CI over "
               "seeds. Triangles mark each method's tuned learning rate, crosses learning rates where "
               "some seeds diverged (those runs have no final loss), the dashed line the shared lr."),
    FigureSpec("fig04_effective_lr_response", "The same runs against effective learning rate",
               "Final test loss against effective learning rate (nominal lr times feedback gain). "
               "Points are runs; lines join, per nominal lr, the mean with its 95% CI. The gain is one "
               "scalar per run (over the hidden layers), while the output layer's step is the nominal lr "
               "alone: this axis is a summary of the per-layer steps, and the factorial (the "
               "decomposition table) is the experiment on them."),
    FigureSpec("fig05_causal_diagram", "Causal diagram",
               "The method acts on test loss through its error direction and, through its per-layer "
               "feedback gain g_l, on the hidden layers' step sizes (lr × g_l); the nominal learning rate "
               "sets every layer's step, the output layer's alone. A learning rate tuned for the method "
               "itself lies on the method's causal path (a mediator); one chosen for another method (bp) "
               "confounds the comparison."),
    FigureSpec("fig06_forest", "Estimates: each method against bp",
               "Difference in test loss, method minus bp, with 95% intervals, one panel per estimand, "
               "each with its own axis: at bp's tuned learning rate (chosen for bp), at the smallest "
               "grid learning rate (too small for bp: the original write-up's regime), with each "
               "method at its own tuned learning rate, and at matched effective learning rate "
               "(regression on the grid). Holm-adjusted p-values at the right."),
    FigureSpec("fig07_mediation", "Mediation: sign vs sign_scaled through feedback gain",
               "Average causal mediated effect (ACME) of sign over sign_scaled through log feedback "
               "gain, the direct effect (ADE) and the total effect on test loss, with 95% intervals "
               "and each effect's standard deviation; seeds enter both models as fixed effects. "
               "ACME and ADE are far less precise than their sum."),
    FigureSpec("fig08_time_to_target", "Time to target loss",
               "Kaplan-Meier estimate of the fraction of runs whose smoothed training loss has not yet "
               "reached the target, against examples seen, with 95% bands. Runs that never reach it are "
               "censored, not dropped."),
    FigureSpec("fig09_alignment", "Alignment over training",
               "Per layer, the angle between the feedback matrix B and the forward weights W, and the "
               "cosine between each rule's hidden error signal and backprop's on the same batch; runs "
               "at each method's tuned learning rate, mean and 95% CI over seeds."),
    FigureSpec("fig10_tuning", "Learning-rate tuning (Optuna)",
               "Left: best validation loss so far against trial number, one line per study (method and "
               "repeat). Right: every completed trial's learning rate against its validation loss; "
               "dotted lines mark each study's best learning rate."),
    FigureSpec("fig11_grid_contrasts", "Method minus bp at every grid learning rate",
               "Paired difference in test loss, method minus bp, at each grid learning rate, with "
               "paired t 95% intervals over seeds (symmetric-log axis). Below zero the method has the "
               "lower loss at that learning rate; the dotted line marks bp's tuned learning rate."),
    FigureSpec("fig12_divergence", "Divergence as an outcome",
               "Fraction of grid runs that diverged (loss became NaN or infinite) per method and "
               "learning rate, with Wilson 95% intervals."),
    FigureSpec("fig13_tuning_budget", "Expected best validation loss against tuning budget",
               "Expected best validation loss after k tuning trials (Dodge et al. 2019), per method, "
               "from the i.i.d. trials only: those recorded as drawn at random, else TPE's startup "
               "trials (the first tune.batch of each study); the panel title says which."),
    FigureSpec("fig14_rule_comparison", "Rule comparison: every rule against bp",
               "Test loss (left) and test accuracy (right, percentage points), each rule minus bp. "
               "Filled squares: each rule at its own tuned learning rate (paired t 95% interval, over "
               "tuning repeats when each seed trains at its repeat's lr). Open diamonds: at matched effective learning rate (grid regression, cluster-"
               "robust by seed, fitted on bp's and that rule's runs); a faded diamond marks a rule whose "
               "curve has another slope than bp's (p < 0.05), where the one difference averages one "
               "that changes with the learning rate. The diamonds rest on one scalar gain per run; the "
               "decomposition table tests the step sizes by experiment. so_ rules (dashed in the other "
               "figures) carry activity propagation on top of their base rule. An interval much wider than the others runs off "
               "the panel. Absolute values and times to target: tables/rule_comparison.csv."),
)
