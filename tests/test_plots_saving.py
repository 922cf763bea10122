"""soap.plots.saving: PNG and PDF written whole or not at all, and plot functions write nothing."""

import os

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from soap import plots
from soap.plots import save_figure


@pytest.fixture
def figure():
    fig, ax = plt.subplots(layout="constrained")
    ax.plot([0, 1], [1, 0])
    ax.set_title("a line")
    yield fig
    plt.close(fig)


def test_png_and_pdf_are_written_and_returned(tmp_path, figure):
    png, pdf = save_figure(figure, tmp_path / "sub" / "fig01")
    assert (png, pdf) == (tmp_path / "sub" / "fig01.png", tmp_path / "sub" / "fig01.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in png.parent.iterdir()) == ["fig01.pdf", "fig01.png"]  # no temporary left


def test_the_same_figure_gives_the_same_pdf_bytes(tmp_path, figure):
    _, first = save_figure(figure, tmp_path / "a")
    _, second = save_figure(figure, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, figure, monkeypatch):
    save_figure(figure, tmp_path / "fig")
    before = (tmp_path / "fig.png").read_bytes()

    def broken(path, **_):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_figure(figure, tmp_path / "fig")
    assert (tmp_path / "fig.png").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["fig.pdf", "fig.png"]


def test_formats_are_chosen_and_checked(tmp_path, figure):
    assert save_figure(figure, tmp_path / "only", formats=("png",)) == (tmp_path / "only.png",)
    assert not (tmp_path / "only.pdf").exists()
    with pytest.raises(ValueError, match="formats must be some of png, pdf, got \\['svg'\\]"):
        save_figure(figure, tmp_path / "x", formats=("svg",))


def test_plot_functions_return_a_figure_and_write_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = pd.DataFrame({"dataset": "mnist", "method": ["bp", "fa"], "seed": 0, "lr": 0.1,
                         "test_loss": [0.3, 0.4], "diverged": False, "effective_lr": [0.1, 0.02]})
    for fig, axes in (plots.plot_lr_response(runs), plots.plot_effective_lr_response(runs),
                      plots.plot_causal_diagram(), plots.plot_forest(None), plots.plot_km(None)):
        assert isinstance(fig, plt.Figure) and axes.ndim == 2 and axes.flat[0].figure is fig
        plt.close(fig)
    assert os.listdir(tmp_path) == []
