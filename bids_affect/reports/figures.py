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


# --------------------------------------------------------------------------- stimulus models


def _layer_order(values: pd.Series) -> list[str]:
    """Layers in order of first appearance (the network's forward order in the tables)."""
    return [str(v) for v in pd.unique(values.astype(str))]


def plot_tuning_curves(channels: pd.DataFrame, *, layer: str | None = None,
                       title: str | None = None) -> Figure:
    """Mean tuning curve of the kept channels, grouped by preferred category (seed 002).

    Parameters
    ----------
    channels : DataFrame
        A selectivity table (``layer``, ``preferred``, ``kept``, ``tuning_CATEGORY``
        columns; ``network`` and ``image_set`` when present): the trained
        network's rows are drawn, one panel per image set.
    layer : str, optional
        The layer drawn (default the deepest, the table's last).
    title : str, optional

    Examples
    --------
    >>> table = pd.DataFrame({"layer": "relu5", "preferred": ["pleasant", "neutral"],
    ...                       "kept": True, "tuning_pleasant": [1.0, -0.5],
    ...                       "tuning_neutral": [-1.0, 0.5]})
    >>> len(plot_tuning_curves(table).axes)
    1
    """
    rows = channels[channels["network"] == "trained"] if "network" in channels else channels
    layer = layer or _layer_order(rows["layer"])[-1]
    rows = rows[(rows["layer"].astype(str) == layer) & rows["kept"].astype(bool)]
    columns = [c for c in rows.columns if c.startswith("tuning_")]
    categories = [c.removeprefix("tuning_") for c in columns]
    sets = (_layer_order(rows["image_set"]) if "image_set" in rows else [None]) or [None]
    figure = new_figure(1.2 + 3.0 * len(sets), 3.2)
    axes = np.atleast_1d(figure.subplots(1, len(sets), sharey=True, squeeze=False)[0])
    colours = class_colours(categories)
    for ax, name in zip(axes, sets):
        mine = rows if name is None else rows[rows["image_set"] == name]
        for category in categories:
            group = mine[mine["preferred"] == category][columns].to_numpy(dtype=float)
            if not len(group):
                continue
            ax.errorbar(range(len(categories)), group.mean(axis=0), yerr=group.std(axis=0),
                        marker="o", capsize=3, color=colours[category],
                        label=f"prefer {category} ({len(group)})")
        ax.axhline(0, color="0.7", linewidth=0.8)
        ax.set_xticks(range(len(categories)), categories)
        ax.set_title(f"{name}, {layer}" if name else layer, fontsize="medium")
        ax.legend(fontsize="x-small", frameon=False)
    axes[0].set_ylabel("tuning value (z)")
    if title:
        figure.suptitle(title)
    return figure


def plot_selectivity_by_layer(layers: pd.DataFrame, overlap: pd.DataFrame | None = None, *,
                              title: str | None = None) -> Figure:
    """Mean SI by layer and, with two image sets, the overlap against its null (seed 002).

    Parameters
    ----------
    layers : DataFrame
        Per layer: ``layer``, ``si_mean`` (``network``, ``image_set`` when present).
    overlap : DataFrame, optional
        Overlap rows (``layer``, ``overlap``, ``expected``; ``network``,
        ``image_set_a``, ``image_set_b``), summed over categories per layer.
    title : str, optional

    Examples
    --------
    >>> layers = pd.DataFrame({"layer": ["relu1", "relu2"], "si_mean": [0.2, 0.6]})
    >>> len(plot_selectivity_by_layer(layers).axes)
    1
    """
    panels = 2 if overlap is not None and len(overlap) else 1
    figure = new_figure(4.0 * panels + 1.0, 3.4)
    axes = np.atleast_1d(figure.subplots(1, panels, squeeze=False)[0])
    order = _layer_order(layers["layer"])
    keys = [c for c in ("network", "image_set") if c in layers]
    groups = layers.groupby(keys, sort=False) if keys else [((), layers)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        positions = [order.index(str(name)) for name in group["layer"]]
        style = "--" if "random" in key else "-"
        axes[0].plot(positions, group["si_mean"], style, marker="o",
                     label=" ".join(map(str, key)) or None)
    axes[0].set_xticks(range(len(order)), order, rotation=45, ha="right")
    axes[0].set_ylabel("mean selectivity index (max d')")
    if keys:
        axes[0].legend(fontsize="x-small", frameon=False)
    if panels == 2:
        keys = [c for c in ("network", "image_set_a", "image_set_b") if c in overlap]
        summed = overlap.groupby([*keys, "layer"], sort=False)[["overlap", "expected"]].sum()
        for key, group in summed.groupby(level=list(range(len(keys))), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            names = group.index.get_level_values("layer").astype(str)
            positions = [order.index(name) for name in names]
            line = axes[1].plot(positions, group["overlap"], "--" if "random" in key else "-",
                                marker="o", label=f"{' '.join(map(str, key))}: observed")
            axes[1].plot(positions, group["expected"], ":", color=line[0].get_color(),
                         label="expected (two random sets)")
        axes[1].set_xticks(range(len(order)), order, rotation=45, ha="right")
        axes[1].set_ylabel("channels selective in both sets")
        axes[1].legend(fontsize="x-small", frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def plot_gain_curves(curves: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Readout F1 against the gain alpha: selective channels and random ones (seed 002).

    Parameters
    ----------
    curves : DataFrame
        ``category``, ``channels`` (selective or random), ``alpha``,
        ``f1_test`` (``image_set``, ``layer`` when present): one row per
        channel set and alpha; ``alpha = -1`` is the lesion.
    title : str, optional

    Examples
    --------
    >>> curves = pd.DataFrame({"category": "pleasant", "channels": ["selective"] * 2
    ...                        + ["random"] * 2, "alpha": [0.0, 1.0] * 2,
    ...                        "f1_test": [0.6, 0.7, 0.6, 0.58]})
    >>> len(plot_gain_curves(curves).axes)
    1
    """
    sets = _layer_order(curves["image_set"]) if "image_set" in curves else [None]
    categories = _layer_order(curves["category"])
    layers = _layer_order(curves["layer"]) if "layer" in curves else [None]
    figure = new_figure(0.8 + 3.0 * len(categories), 0.6 + 2.6 * len(sets))
    axes = figure.subplots(len(sets), len(categories), squeeze=False, sharex=True,
                           sharey=True)
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(layers)))
    for row, name in enumerate(sets):
        for column, category in enumerate(categories):
            ax = axes[row, column]
            mine = curves[curves["category"] == category]
            if name is not None:
                mine = mine[mine["image_set"] == name]
            for layer, colour in zip(layers, colours):
                rows = mine if layer is None else mine[mine["layer"].astype(str) == layer]
                for kind, style in (("selective", "-"), ("random", ":")):
                    mean = (rows[rows["channels"] == kind].groupby("alpha")["f1_test"]
                            .mean())
                    if len(mean):
                        ax.plot(mean.index, mean.to_numpy(), style, color=colour,
                                label=(layer or kind) if kind == "selective" else None)
            ax.set_title(f"{name}: {category}" if name else category, fontsize="small")
            ax.axvline(0, color="0.8", linewidth=0.8)
    for ax in axes[-1]:
        ax.set_xlabel("gain alpha (-1: lesion)")
    for ax in axes[:, 0]:
        ax.set_ylabel("test F1")
    axes[0, -1].legend(fontsize="x-small", frameon=False, title="solid: selective, "
                       "dotted: random", title_fontsize="x-small")
    if title:
        figure.suptitle(title)
    return figure


def plot_rating_coefficients(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Coefficients of the rating terms per ROI: one subject's (with SE) or every subject's.

    Parameters
    ----------
    table : DataFrame
        ``roi``, ``term``, ``coef`` and, for one subject, ``se`` (bars with
        95% intervals); with a ``participant_id`` column holding several
        subjects, each subject is a point and the group mean a bar.
    title : str, optional

    Examples
    --------
    >>> table = pd.DataFrame({"roi": "amygdala", "term": ["valence", "arousal"],
    ...                       "coef": [0.4, 0.1], "se": [0.1, 0.1]})
    >>> len(plot_rating_coefficients(table).axes)
    1
    """
    terms = _layer_order(table["term"])
    rois = _layer_order(table["roi"])
    subjects = (_layer_order(table["participant_id"]) if "participant_id" in table
                else [])
    figure = new_figure(1.5 + 1.2 * len(rois) * max(1, len(terms)) / 2, 3.4)
    ax = figure.subplots()
    width = 0.8 / len(terms)
    colours = class_colours(terms)
    for j, term in enumerate(terms):
        rows = table[table["term"] == term]
        positions = np.arange(len(rois)) + (j - (len(terms) - 1) / 2) * width
        means = [rows.loc[rows["roi"] == roi, "coef"].mean() for roi in rois]
        if len(subjects) > 1:
            ax.bar(positions, means, width * 0.9, color=colours[term], alpha=0.4, label=term)
            for position, roi in zip(positions, rois):
                values = rows.loc[rows["roi"] == roi, "coef"].to_numpy(dtype=float)
                ax.scatter(np.full(len(values), position), values, s=10,
                           color=colours[term], zorder=3)
        else:
            errors = ([1.96 * rows.loc[rows["roi"] == roi, "se"].mean() for roi in rois]
                      if "se" in rows else None)
            ax.bar(positions, means, width * 0.9, yerr=errors, capsize=3,
                   color=colours[term], label=term)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(range(len(rois)), rois)
    ax.set_ylabel("standardised coefficient")
    ax.legend(fontsize="x-small", frameon=False, ncols=min(len(terms), 4))
    if title:
        ax.set_title(title, fontsize="medium")
    return figure


def plot_dendrogram(linkage: np.ndarray, labels: Sequence[str], *,
                    title: str | None = None) -> Figure:
    """Hierarchical clustering of the synthesis targets (seed 000's Figure 2).

    Examples
    --------
    >>> from scipy.cluster import hierarchy
    >>> tree = hierarchy.linkage(np.array([[0.0], [1.0], [5.0]]), method="average")
    >>> len(plot_dendrogram(tree, ["CM", "LB", "SF"]).axes)
    1
    """
    from scipy.cluster import hierarchy

    figure = new_figure(1.5 + 0.6 * len(labels), 3.0)
    ax = figure.subplots()
    hierarchy.dendrogram(np.asarray(linkage, dtype=float), labels=list(labels), ax=ax,
                         color_threshold=0, above_threshold_color="0.2")
    ax.set_ylabel("distance of mean response profiles")
    if title:
        ax.set_title(title, fontsize="medium")
    return figure


def plot_image_grid(images: Mapping[str, Sequence[np.ndarray]], *,
                    title: str | None = None) -> Figure:
    """Images in rows, one row per name (the images synthesised for each target).

    Parameters
    ----------
    images : mapping of str to sequence of arrays
        Per row, RGB images ``(height, width, 3)``, uint8 or floats in [0, 1].
    title : str, optional

    Examples
    --------
    >>> grid = plot_image_grid({"CM": [np.zeros((4, 4, 3))] * 2, "LB": [np.ones((4, 4, 3))]})
    >>> len(grid.axes)
    4
    """
    columns = max(len(row) for row in images.values())
    figure = new_figure(1.0 + 1.1 * columns, 0.4 + 1.1 * len(images))
    axes = figure.subplots(len(images), columns, squeeze=False)
    for row, (name, pictures) in enumerate(images.items()):
        for column in range(columns):
            ax = axes[row, column]
            ax.set_axis_off()
            if column < len(pictures):
                ax.imshow(np.asarray(pictures[column]), interpolation="nearest")
        axes[row, 0].set_axis_on()
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------- group level


def plot_alignment_scores(tables: Mapping[str, pd.DataFrame], *,
                          title: str | None = None) -> Figure:
    """Each held-out subject's balanced accuracy under each alignment, paired by subject.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        Alignment -> its cross-subject table (``participant_id``,
        ``balanced_accuracy``, ``chance_balanced_accuracy``), scored on the
        same folds, so a subject's line shows what alignment changed for it.
    title : str, optional

    Examples
    --------
    >>> none = pd.DataFrame({"participant_id": ["sub-01", "sub-02"],
    ...                      "balanced_accuracy": [0.3, 0.35],
    ...                      "chance_balanced_accuracy": [0.25, 0.25]})
    >>> srm = none.assign(balanced_accuracy=[0.5, 0.45])
    >>> figure = plot_alignment_scores({"none": none, "srm": srm})
    >>> [t.get_text() for t in figure.axes[0].get_xticklabels()]
    ['none', 'srm']
    """
    methods = list(tables)
    figure = new_figure(1.8 + 1.3 * len(methods), 3.6)
    ax = figure.subplots()
    positions = np.arange(len(methods))
    scores = pd.DataFrame({method: table.set_index("participant_id")["balanced_accuracy"]
                           for method, table in tables.items()})
    for _, row in scores.iterrows():
        ax.plot(positions, row.to_numpy(float), color="0.55", linewidth=1, marker="o",
                markersize=4, zorder=2)
    ax.plot(positions, scores.mean(axis=0).to_numpy(float), color="C3", linewidth=2.5,
            marker="o", label="mean over held-out subjects", zorder=3)
    chance = np.mean([table["chance_balanced_accuracy"].mean() for table in tables.values()])
    ax.axhline(chance, color="0.15", linestyle=":", label="chance (null mean)")
    ax.set_xticks(positions, methods)
    ax.set_xlim(-0.4, len(methods) - 0.6)
    ax.set_ylim(0, 1)
    ax.set_xlabel("alignment")
    ax.set_ylabel("balanced accuracy")
    figure.legend(fontsize="small", loc="outside lower center", ncols=2, frameon=False)
    if title:
        ax.set_title(title)
    return figure


def plot_group_map(image: nib.Nifti1Image | str | Path, *, title: str | None = None
                   ) -> Figure:
    """A group statmap in an MNI space as a glass brain (0 voxels are not drawn).

    Examples
    --------
    >>> data = np.zeros((9, 11, 9), np.float32)
    >>> data[3:5, 4:6, 3:5] = 4.0
    >>> affine = np.diag([18.0, 18.0, 18.0, 1.0]); affine[:3, 3] = [-72, -100, -60]
    >>> len(plot_group_map(nib.Nifti1Image(data, affine)).axes) > 1
    True
    """
    from nilearn import plotting

    image = nib.load(image) if isinstance(image, (str, Path)) else image
    data = np.asarray(image.dataobj, dtype=np.float32)
    vmax = float(np.abs(data).max()) or 1.0
    figure = new_figure(7.5, 2.8)
    figure.set_layout_engine("none")  # nilearn places its own axes
    plotting.plot_glass_brain(image, figure=figure, plot_abs=False, threshold=None,
                              colorbar=True, cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                              symmetric_cbar=True, title=title, black_bg=False)
    return figure


def plot_region_means(terms: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Each region's mean (and SE) from a region mixed model, the mean over regions beside.

    Parameters
    ----------
    terms : DataFrame
        A ``mixedmodel.tsv``: ``term`` (``intercept``, ``region[NAME]``),
        ``beta``, ``se``.

    Examples
    --------
    >>> terms = pd.DataFrame({"term": ["intercept", "region[CM]", "region[LB]"],
    ...                       "beta": [0.05, 0.07, 0.03], "se": [0.01, 0.01, 0.01]})
    >>> [t.get_text() for t in plot_region_means(terms).axes[0].get_xticklabels()]
    ['CM', 'LB']
    """
    regions = terms[terms["term"].astype(str).str.startswith("region[")]
    names = [str(term)[len("region["):-1] for term in regions["term"]]
    figure = new_figure(1.6 + 0.8 * len(names), 3.2)
    ax = figure.subplots()
    positions = np.arange(len(names))
    ax.errorbar(positions, regions["beta"], yerr=regions["se"], fmt="o", color="C0",
                capsize=3, label="region mean ± SE")
    intercept = terms[terms["term"] == "intercept"]
    if len(intercept):
        ax.axhline(float(intercept["beta"].iloc[0]), color="C3", linestyle="--",
                   label="mean over regions")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xticks(positions, names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("r")
    figure.legend(fontsize="small", loc="outside lower center", ncols=2, frameon=False)
    if title:
        ax.set_title(title)
    return figure
