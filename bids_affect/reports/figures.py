"""Report figures with matplotlib and nilearn, saved as deterministic SVG.

Each ``plot_*`` function takes data already read from the derivatives and
returns a :class:`matplotlib.figure.Figure` drawn on the Agg canvas (no pyplot
state, no display), so a notebook can call it too. :func:`save_svg` writes a
figure atomically with no date and with element ids from a fixed salt, so equal
data give byte-identical files; text is drawn as paths, so a report needs no
font at all.

Examples
--------
>>> import tempfile
>>> figure = plot_null_distribution([0.2, 0.25, 0.3], observed=0.6, chance=0.25,
...                                 null_band=(0.2, 0.3), p=0.25)
>>> save_svg(figure, Path(tempfile.mkdtemp()) / "null.svg").suffix
'.svg'
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bids_affect.io.derivatives import atomic_path

#: matplotlib settings that make SVG output reproducible and self-contained.
SVG_RC = {"svg.hashsalt": "bids_affect", "svg.fonttype": "path", "svg.image_inline": True}

#: Colour of volumes without a label.
UNLABELLED_COLOUR = "#d9d9d9"


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, safe in worker processes).

    Examples
    --------
    >>> new_figure(4, 3).get_size_inches().tolist()
    [4.0, 3.0]
    """
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_svg(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as SVG, atomically and reproducibly.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> a = save_svg(new_figure(2, 2), folder / "a.svg").read_bytes()
    >>> a == save_svg(new_figure(2, 2), folder / "b.svg").read_bytes()
    True
    """
    buffer = io.BytesIO()
    with matplotlib.rc_context(SVG_RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """One colour per class, in order (matplotlib's tab10 cycle).

    Examples
    --------
    >>> class_colours(["fear", "anger"])
    {'fear': 'C0', 'anger': 'C1'}
    """
    return {name: f"C{index % 10}" for index, name in enumerate(classes)}


def plot_label_timeline(labels: Mapping[str, pd.DataFrame], classes: Sequence[str], *,
                        title: str | None = None) -> Figure:
    """The label of every volume over time, one row per run.

    Parameters
    ----------
    labels : mapping of str to DataFrame
        Run name to its ``desc-labels_events.tsv`` (``onset``, ``duration``,
        ``trial_type``; missing for unlabelled volumes).
    classes : sequence of str
        Classes in colour order.
    title : str, optional

    Examples
    --------
    >>> events = pd.DataFrame({"onset": [0.0, 2.0, 4.0], "duration": 2.0,
    ...                        "trial_type": ["fear", None, "anger"]})
    >>> len(plot_label_timeline({"run-1": events}, ["anger", "fear"]).axes)
    1
    """
    colours = {**class_colours(classes), None: UNLABELLED_COLOUR}
    figure = new_figure(9, 0.5 + 0.45 * len(labels) + 0.6)
    ax = figure.subplots()
    for row, events in enumerate(labels.values()):
        for name, start, width in label_segments(events):
            ax.broken_barh([(start, width)], (row - 0.4, 0.8),
                           facecolors=colours.get(name, UNLABELLED_COLOUR), linewidth=0)
    ax.set_yticks(range(len(labels)), list(labels))
    ax.invert_yaxis()
    ax.set_xlabel("time from run start (s)")
    handles = [Patch(color=colours[name], label=name) for name in classes]
    handles.append(Patch(color=UNLABELLED_COLOUR, label="unlabelled (excluded)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
                  fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return figure


def label_segments(events: pd.DataFrame) -> list[tuple[str | None, float, float]]:
    """Runs of consecutive volumes with the same label: ``(label, start, width)``.

    Drawing one bar per segment instead of one per volume leaves no seams
    between volumes and keeps the SVG small. Unlabelled volumes have label None.

    Examples
    --------
    >>> events = pd.DataFrame({"onset": [0.0, 2.0, 4.0, 6.0], "duration": 2.0,
    ...                        "trial_type": ["fear", "fear", None, "anger"]})
    >>> label_segments(events)
    [('fear', 0.0, 4.0), (None, 4.0, 2.0), ('anger', 6.0, 2.0)]
    """
    names = [None if pd.isna(v) else str(v) for v in events["trial_type"]]
    onsets = events["onset"].to_numpy(dtype=float)
    ends = onsets + events["duration"].to_numpy(dtype=float)
    segments: list[tuple[str | None, float, float]] = []
    start = 0
    for index in range(1, len(names) + 1):
        if index == len(names) or names[index] != names[start]:
            segments.append((names[start], float(onsets[start]),
                             float(ends[index - 1] - onsets[start])))
            start = index
    return segments


def plot_null_distribution(null: Sequence[float], *, observed: float,
                           chance: float | None = None,
                           null_band: Sequence[float] | None = None, p: float | None = None,
                           random_split: float | None = None,
                           title: str | None = None) -> Figure:
    """Observed balanced accuracy against its permutation null.

    Parameters
    ----------
    null : sequence of float
        Balanced accuracies of the permutations.
    observed : float
        The decoder's balanced accuracy.
    chance : float, optional
        Chance level (the null mean).
    null_band : (float, float), optional
        Central band of the null distribution.
    p : float, optional
        Permutation p-value (shown in the legend).
    random_split : float, optional
        The random-split audit's score (a leaky split, marked for comparison).
    title : str, optional

    Examples
    --------
    >>> figure = plot_null_distribution([0.2, 0.3], observed=0.5, random_split=0.8)
    >>> [t.get_text() for t in figure.legends[0].get_texts()][0]
    'observed 0.500'
    """
    figure = new_figure(8.4, 3.4)
    ax = figure.subplots()
    values = np.asarray(null, dtype=float)
    label = f"observed {observed:.3f}" + (f" (p = {p:.3g})" if p is not None else "")
    ax.axvline(observed, color="C3", linewidth=2.2, label=label)
    if values.size:
        bins = min(40, max(5, int(np.sqrt(values.size)) * 2))
        ax.hist(values, bins=bins, color="#9ecae1", edgecolor="white",
                label=f"null ({values.size} permutations)")
    if null_band is not None:
        low, high = null_band
        ax.axvspan(low, high, color="0.5", alpha=0.18, label=f"null band {low:.3f}-{high:.3f}")
    if chance is not None:
        ax.axvline(chance, color="0.2", linestyle="--", label=f"chance {chance:.3f}")
    if random_split is not None:
        ax.axvline(random_split, color="C1", linestyle=":", linewidth=2,
                   label=f"random 80/20 split {random_split:.3f} (leaks)")
    ax.set_xlabel("balanced accuracy")
    ax.set_ylabel("permutations")
    ax.set_xlim(0, 1)
    figure.legend(fontsize="small", loc="outside right upper", frameon=False)
    if title:
        ax.set_title(title)
    return figure


def plot_confusion(confusion: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Confusion matrix: counts written in cells, colour = share of the true class.

    Parameters
    ----------
    confusion : DataFrame
        Rows true classes (index), columns predicted classes.
    title : str, optional

    Examples
    --------
    >>> table = pd.DataFrame([[3, 1], [0, 4]], index=["a", "b"], columns=["a", "b"])
    >>> sorted(t.get_text() for t in plot_confusion(table).axes[0].texts)
    ['0', '1', '3', '4']
    """
    counts = confusion.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 1.6 + 0.55 * len(confusion.columns)
    figure = new_figure(size + 1.2, size)
    ax = figure.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), value in np.ndenumerate(counts):
        ax.text(column, row, f"{int(value)}", ha="center", va="center",
                color="white" if share[row, column] > 0.5 else "black", fontsize="small")
    ax.set_xticks(range(counts.shape[1]), [str(c) for c in confusion.columns], rotation=45,
                  ha="right")
    ax.set_yticks(range(counts.shape[0]), [str(c) for c in confusion.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    figure.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if title:
        ax.set_title(title)
    return figure


def plot_occlusion_map(image: nib.Nifti1Image | str | Path, *, mni: bool,
                       title: str | None = None) -> Figure:
    """An occlusion statmap: glass brain in MNI space, else slices on its own support.

    Native-space data make no MNI assumption: the map is drawn over the voxels
    it covers (its non-zero support, i.e. the analysed mask), not a template,
    and with voxel-grid cuts through its peak.

    Parameters
    ----------
    image : Nifti1Image or path
        The statmap.
    mni : bool
        Whether the image is in an MNI space (``space-MNI*``).
    title : str, optional

    Examples
    --------
    >>> data = np.zeros((6, 7, 6), dtype=np.float32)
    >>> data[2:4, 2:5, 2:4] = 0.1
    >>> len(plot_occlusion_map(nib.Nifti1Image(data, np.eye(4)), mni=False).axes) > 1
    True
    """
    from nilearn import plotting

    image = nib.load(image) if isinstance(image, (str, Path)) else image
    data = np.asarray(image.dataobj, dtype=np.float32)
    vmax = float(np.abs(data).max()) or 1.0
    figure = new_figure(7.5, 2.8)
    # constrained layout fights nilearn's own axes placement
    figure.set_layout_engine("none")
    if mni:
        plotting.plot_glass_brain(image, figure=figure, plot_abs=False, threshold=None,
                                  colorbar=True, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                                  symmetric_cbar=True, title=title, black_bg=False)
    else:
        support = nib.Nifti1Image((data != 0).astype(np.float32), image.affine)
        peak = np.unravel_index(np.argmax(np.abs(data)), data.shape)
        cut = nib.affines.apply_affine(image.affine, peak)
        plotting.plot_stat_map(image, bg_img=support, figure=figure, cut_coords=cut,
                               threshold=None, colorbar=True, cmap="RdBu_r", vmax=vmax,
                               symmetric_cbar=True, title=title, black_bg=False,
                               draw_cross=False, dim=0, annotate=True)
    return figure


def plot_rdm(rdm: pd.DataFrame, *, title: str | None = None) -> Figure:
    """A representational dissimilarity matrix as a heat map with its values.

    Examples
    --------
    >>> rdm = pd.DataFrame([[0, 1.2], [1.2, 0]], index=["a", "b"], columns=["a", "b"])
    >>> sorted(t.get_text() for t in plot_rdm(rdm).axes[0].texts)
    ['0.00', '0.00', '1.20', '1.20']
    """
    values = rdm.to_numpy(dtype=float)
    size = 1.8 + 0.5 * len(rdm.columns)
    figure = new_figure(size + 1.2, size)
    ax = figure.subplots()
    image = ax.imshow(values, cmap="viridis")
    middle = np.nanmean([np.nanmin(values), np.nanmax(values)])
    for (row, column), value in np.ndenumerate(values):
        ax.text(column, row, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center",
                va="center", fontsize="x-small", color="white" if value < middle else "black")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in rdm.columns], rotation=45,
                  ha="right")
    ax.set_yticks(range(values.shape[0]), [str(c) for c in rdm.index])
    figure.colorbar(image, ax=ax, label="dissimilarity", shrink=0.8)
    if title:
        ax.set_title(title, fontsize="medium")
    return figure


def plot_subject_scores(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Each subject's balanced accuracy against its chance level and null band.

    Parameters
    ----------
    table : DataFrame
        A group table: ``participant_id``, ``balanced_accuracy`` and, when
        present, ``chance_balanced_accuracy``, ``null_low``, ``null_high``,
        ``p_permutation`` and ``random_split_balanced_accuracy``.
    title : str, optional

    Examples
    --------
    >>> table = pd.DataFrame({"participant_id": ["sub-01", "sub-02"],
    ...                       "balanced_accuracy": [0.6, 0.3],
    ...                       "chance_balanced_accuracy": [0.25, 0.2],
    ...                       "null_low": [0.2, 0.15], "null_high": [0.3, 0.26]})
    >>> [t.get_text() for t in plot_subject_scores(table).axes[0].get_yticklabels()]
    ['sub-01', 'sub-02']
    """
    rows = np.arange(len(table))
    figure = new_figure(6.4, 1.9 + 0.35 * len(table))
    ax = figure.subplots()
    if {"null_low", "null_high"} <= set(table.columns):
        for row, low, high in zip(rows, table["null_low"], table["null_high"]):
            ax.plot([low, high], [row, row], color="0.6", linewidth=6, solid_capstyle="butt",
                    label="null band" if row == 0 else None)
    if "chance_balanced_accuracy" in table:
        ax.scatter(table["chance_balanced_accuracy"], rows, marker="|", s=220, color="0.15",
                   label="chance (null mean)", zorder=3)
    if "random_split_balanced_accuracy" in table:
        ax.scatter(table["random_split_balanced_accuracy"], rows, marker="x", color="C1",
                   label="random 80/20 split (leaks)", zorder=3)
    ax.scatter(table["balanced_accuracy"], rows, color="C3", s=36, zorder=4,
               label="balanced accuracy")
    ax.set_yticks(rows, table["participant_id"].astype(str).tolist())
    ax.set_ylim(len(table) - 0.5, -0.5)  # first subject on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("balanced accuracy")
    figure.legend(fontsize="small", loc="outside lower center", ncols=2, frameon=False)
    if title:
        ax.set_title(title)
    return figure
