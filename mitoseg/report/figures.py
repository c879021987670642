"""Figures of the analysis (matplotlib, Agg backend), from a StudyAnalysis (mitoseg.analysis.study_analysis).

Each plot_* function writes one PNG atomically and returns its path, or returns a string saying why
it was skipped (nothing to plot).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mitoseg.core.errors import error_line  # noqa: E402
from mitoseg.core.io_utils import atomic_save  # noqa: E402
from mitoseg.core.paths import ExperimentPaths  # noqa: E402
from mitoseg.core.paths import FIG_BASELINE, FIG_BEST, FIG_COMPREHENSIVE, FIG_CONFIRMATION, FIG_CURVES, FIG_HEATMAPS  # noqa: E402
from mitoseg.report.formats import f3  # noqa: E402
from mitoseg.analysis.stats import config_mask  # noqa: E402
from mitoseg.analysis.study_analysis import StudyAnalysis  # noqa: E402

ARCH_COLORS = {"UNet": "#1f77b4", "Attention_UNet": "#ff7f0e", "Attention_ResUNet": "#2ca02c"}
_EXTRA_COLORS = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "figure.dpi": 100})


def _color(arch: str, archs: list) -> str:
    if arch in ARCH_COLORS:
        return ARCH_COLORS[arch]
    return _EXTRA_COLORS[archs.index(arch) % len(_EXTRA_COLORS)] if arch in archs else "#333333"


def _save(fig, path: Path) -> Path:
    def save(tmp):
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    atomic_save(path, save)
    plt.close(fig)
    return path


def _legend(ax, **kw) -> None:
    """The panel's legend; an empty panel (no val-loss stability: runs of one epoch) says so on the figure,
    not as a matplotlib warning on stderr."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)
    elif not ax.has_data():
        ax.text(0.5, 0.5, "no values to show", ha="center", va="center", transform=ax.transAxes, color="grey")


def _baseline_value(res: StudyAnalysis) -> Optional[float]:
    vals = res.df["baseline"].dropna()
    return float(vals.mean()) if len(vals) else None


def _short_status(text: str) -> str:
    parts = [p.split(" ", 1)[1] for p in str(text).split(", ") if " " in p]
    return "\n".join(dict.fromkeys(parts)) or "no run"


def _shared_limits(values) -> tuple[float, float]:
    """One colour scale for every panel of one metric: the same colour is the same value."""
    vals = np.asarray(values, float)
    vals = vals[np.isfinite(vals)]
    return (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)


def _annotate_cell(ax, im, i: int, j: int, value: float, row, score: bool) -> None:
    """One heatmap cell's label: the value with its run counts, or the status of a cell without one."""
    if not math.isfinite(value):
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="#999999", lw=0))
        ax.text(j, i, _short_status(row["status_text"]).upper(), ha="center", va="center",
                fontsize=8, color="#b00000", fontweight="bold")
        return
    label = f"{value:.3f}"
    if row["n_ok"] < row["n_runs"]:
        label += f"\n({int(row['n_ok'])}/{int(row['n_runs'])} ok)"
    if score and row["n_diverged"]:
        label += f"\n({int(row['n_diverged'])} diverged = 0)"
    if row["degenerate"]:
        label += "\nNOT LEARNED"
    elif row["n_degenerate"]:
        label += f"\n({int(row['n_degenerate'])} degenerate)"
    rgba = im.cmap(im.norm(value))
    color = "white" if (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) < 0.5 else "black"
    ax.text(j, i, label, ha="center", va="center", fontsize=9, color=color,
            fontweight="bold" if row["degenerate"] else "normal")
    if row["degenerate"]:
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))


def plot_heatmaps(res: StudyAnalysis, path: Path) -> Union[Path, str]:
    df, configs, metric = res.df, res.configs, res.metric
    archs = sorted(configs["architecture"].unique()) if len(configs) else []
    if not archs:
        return "no cell has a learning rate and batch size"
    lrs = sorted(df["learning_rate"].dropna().unique())
    bss = sorted(df["batch_size"].dropna().unique())
    base = _baseline_value(res)
    fig, axes = plt.subplots(len(archs), 2, figsize=(2.2 * len(bss) + 7, 1.0 * len(lrs) * len(archs) + 1.6 * len(archs)),
                             squeeze=False)
    limits = {col: _shared_limits(configs[col]) for col in ("score_mean", "stability_mean")}
    for r, arch in enumerate(archs):
        sub = configs[configs["architecture"] == arch].set_index(["learning_rate", "batch_size"])
        for c, (col, title, cmap) in enumerate((("score_mean", metric.label, "viridis"),
                                                ("stability_mean", "val-loss stability (std, lower = steadier)", "magma_r"))):
            ax = axes[r, c]
            mat = np.full((len(lrs), len(bss)), np.nan)
            for i, lr in enumerate(lrs):
                for j, bs in enumerate(bss):
                    if (lr, bs) in sub.index:
                        mat[i, j] = sub.loc[(lr, bs), col]
            cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cm, aspect="auto", vmin=limits[col][0], vmax=limits[col][1])
            for i, lr in enumerate(lrs):
                for j, bs in enumerate(bss):
                    if (lr, bs) not in sub.index:
                        ax.text(j, i, "not in grid", ha="center", va="center", fontsize=8, color="#555555")
                        continue
                    _annotate_cell(ax, im, i, j, mat[i, j], sub.loc[(lr, bs)], score=c == 0)
            ax.set_xticks(range(len(bss)), [f"{int(b)}" for b in bss])
            ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
            ax.set_xlabel("batch size")
            ax.set_ylabel("learning rate")
            extra = f"\nall-foreground baseline {base:.3f}" if (c == 0 and base is not None) else ""
            ax.set_title(f"{arch}: {title}{extra}")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Score (mean over the runs that count, diverged = 0) and stability (mean over successful runs) per "
                 "learning rate x batch size;\none colour scale per metric across architectures; grey hatched = no "
                 "successful run", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _level_stats(ok: pd.DataFrame, factor: str, value: str) -> pd.DataFrame:
    sub = ok[ok[value].notna()]
    g = sub.groupby(["architecture", factor])[value]
    out = pd.DataFrame({"mean": g.mean(), "n": g.size(), "std": g.std(ddof=1)}).reset_index()
    out["sem"] = (out["std"] / np.sqrt(out["n"])).fillna(0.0)
    return out


def plot_comprehensive(res: StudyAnalysis, path: Path) -> Union[Path, str]:
    ok, counted, metric = res.ok, res.counted, res.metric
    if ok.empty:
        return "no successful run"
    archs = sorted(ok["architecture"].unique())
    base = _baseline_value(res)
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    panels = [(axes[0, 0], "learning_rate", "score", metric.label), (axes[0, 1], "batch_size", "score", metric.label),
              (axes[0, 2], "learning_rate", "stability", "val-loss stability (lower = steadier)"),
              (axes[1, 0], "batch_size", "stability", "val-loss stability (lower = steadier)")]
    for ax, factor, value, ylabel in panels:
        stats = _level_stats(counted if value == "score" else ok, factor, value)
        for arch in archs:
            s = stats[stats["architecture"] == arch].sort_values(factor)
            if s.empty:
                continue
            ax.errorbar(s[factor], s["mean"], yerr=s["sem"], marker="o", capsize=4, label=arch,
                        color=_color(arch, archs))
        if factor == "learning_rate":
            ax.set_xscale("log")
        else:
            ax.set_xscale("log", base=2)
            levels = sorted(ok[factor].dropna().unique())
            ax.set_xticks(levels, [f"{int(v)}" for v in levels])
        if value == "score" and base is not None:
            ax.axhline(base, color="red", ls="--", lw=1, label=f"all-foreground baseline {base:.3f}")
        ax.set_xlabel(factor.replace("_", " "))
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'Score' if value == 'score' else 'Stability'} vs {factor.replace('_', ' ')} (mean +- SE)")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    ax = axes[1, 1]
    for arch in archs:
        s = ok[ok["architecture"] == arch]
        good, deg = s[~s["degenerate"]], s[s["degenerate"]]
        ax.scatter(good["stability"], good["score"], label=arch, color=_color(arch, archs), alpha=0.8)
        if len(deg):
            ax.scatter(deg["stability"], deg["score"], marker="x", s=70, color=_color(arch, archs),
                       label=f"{arch} (degenerate)")
    if base is not None:
        ax.axhline(base, color="red", ls="--", lw=1, label="all-foreground baseline")
    ax.set_xlabel("val-loss stability (lower = steadier)")
    ax.set_ylabel(metric.label)
    ax.set_title("Score vs stability, every successful run")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    ax = axes[1, 2]
    data = [counted.loc[counted["architecture"] == a, "score"].dropna().to_numpy() for a in archs]
    bp = ax.boxplot(data, patch_artist=True)
    ax.set_xticks(range(1, len(archs) + 1), archs, rotation=15)
    for patch, arch in zip(bp["boxes"], archs):
        patch.set_facecolor(_color(arch, archs))
        patch.set_alpha(0.5)
    for i, d in enumerate(data, start=1):
        ax.scatter(np.full(len(d), i), d, s=12, color="black", zorder=3)
    if base is not None:
        ax.axhline(base, color="red", ls="--", lw=1, label="all-foreground baseline")
        _legend(ax, fontsize=8)
    ax.set_ylabel(metric.label)
    ax.set_title("Score per architecture (every run that counts, diverged = 0)")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Hyperparameter effects on {metric.label} and stability", fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


def plot_best_configs(res: StudyAnalysis, path: Path) -> Union[Path, str]:
    best, metric = res.best, res.metric
    if res.soft_only:   # the text does not rank a soft-only summary; neither may the figure
        return ("not drawn: the summary holds only soft Jaccard scores, which cannot separate learned from constant "
                "models, so the configurations are not ranked")
    if best.empty:
        return "no configuration has a successful run"
    archs = list(best["architecture"])
    base = _baseline_value(res)
    labels = [f"{a}\nlr {lr:g}, bs {int(bs)}" for a, lr, bs in zip(best["architecture"], best["learning_rate"],
                                                                      best["batch_size"])]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 3.2 * len(archs) * 2), 5))
    x = np.arange(len(archs))
    colors = [_color(a, archs) for a in archs]
    for ax, col, err, title in ((axes[0], "score_mean", "score_sem", metric.label),
                                (axes[1], "stability_mean", None, "val-loss stability (lower = steadier)")):
        vals = best[col].to_numpy(float)
        bars = ax.bar(x, np.nan_to_num(vals), color=colors, alpha=0.85)
        for k, (b, v, n) in enumerate(zip(bars, vals, best["n_ok"])):
            sem = best[err].iloc[k] if err else np.nan
            if np.isfinite(sem):   # a standard error needs 2 runs: none is drawn for n=1, and the label says so
                ax.errorbar([k], [v], yerr=[sem], color="black", capsize=5)
            note = ", no error bar" if err and int(n) < 2 else ""
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + (sem if np.isfinite(sem) else 0),
                    f"{f3(v, 3)}\n(n={int(n)}{note})", ha="center", va="bottom", fontsize=9)
        if col == "score_mean" and base is not None:
            ax.axhline(base, color="red", ls="--", lw=1, label=f"all-foreground baseline {base:.3f}")
            _legend(ax, fontsize=8, loc="lower right")
        ax.set_xticks(x, labels)
        ax.set_ylabel(title)
        ax.set_title(f"Selected configuration per architecture: {title}" + ("\n(error bar = SE over runs)" if err else ""))
        ax.margins(y=0.2)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def _history_path(root: Optional[Path], exp_dir, exp_id) -> Optional[Path]:
    if root is None or exp_dir is None or (isinstance(exp_dir, float) and math.isnan(exp_dir)):
        return None
    d = Path(str(exp_dir))
    d = d if d.is_absolute() else Path(root) / d
    candidates = [ExperimentPaths(d).history_csv]   # a folder renamed by hand keeps its files' names
    if exp_id is not None:
        candidates.insert(0, d / ExperimentPaths(d.with_name(str(exp_id))).history_csv.name)
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def plot_training_curves(res: StudyAnalysis, root: Optional[Path], path: Path) -> Union[Path, str]:
    best = res.best
    curves = []
    for _, row in best.iterrows():
        hist_path = _history_path(root, row["best_run_dir"], row["best_run"])
        if hist_path is None:
            continue
        try:
            hist = pd.read_csv(hist_path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "epoch" not in hist.columns or hist.empty:
            continue
        curves.append((row, hist))
    if not curves:
        return "no training history file (<exp>_history.csv) found next to the summary"
    fig, axes = plt.subplots(2, len(curves), figsize=(5.2 * len(curves), 8), squeeze=False)
    for k, (row, hist) in enumerate(curves):
        ax = axes[0, k]
        for col, style in (("loss", "-"), ("val_loss", "--")):
            if col in hist:
                ax.plot(hist["epoch"], hist[col], style, marker=".", label=col.replace("_", " "))
        ax.set_title(f"{row['architecture']} (lr {row['learning_rate']:g}, bs {int(row['batch_size'])})\nloss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("focal loss")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
        ax = axes[1, k]
        for col in ("iou", "val_iou", "val_dice", "jaccard", "val_jaccard"):
            if col in hist and hist[col].notna().any():
                ax.plot(hist["epoch"], hist[col], marker=".", label=col.replace("_", " ") +
                        (" (soft)" if "jaccard" in col else ""))
        base = row["baseline"]
        if base == base:
            ax.axhline(base, color="red", ls="--", lw=1, label=f"all-foreground baseline {base:.3f}")
        ax.set_title(f"{row['architecture']}: scores per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    fig.suptitle("Training curves of the best run of each architecture", fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


def plot_baseline(res: StudyAnalysis, path: Path) -> Union[Path, str]:
    comp = res.baseline
    if not comp or comp.get("rows") is None:
        return (comp or {}).get("reason") or "no baseline summary given"
    rows = comp["rows"]
    metric = comp["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 4 * len(rows)), 5))
    x = np.arange(len(rows))
    w = 0.38
    for ax, (bcol, ccol, fcol, title) in zip(axes, (
            ("baseline_score", "score", "score_factor", f"{metric} (higher = better)"),
            ("baseline_stability", "stability", "stability_factor", "val-loss stability (lower = steadier)"))):
        b = ax.bar(x - w / 2, np.nan_to_num(rows[bcol].to_numpy(float)), w, label="baseline study", color="#999999")
        c = ax.bar(x + w / 2, np.nan_to_num(rows[ccol].to_numpy(float)), w, label="this study", color="#1f77b4")
        for bars, vals in ((b, rows[bcol]), (c, rows[ccol])):
            for bar, v in zip(bars, vals):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f3(float(v), 4), ha="center",
                        va="bottom", fontsize=8)
        labels = []
        for _, r in rows.iterrows():
            f = r[fcol]
            word = "x better" if fcol == "stability_factor" else "x"
            labels.append(f"{r['architecture']}\nbaseline lr {r['baseline_lr']:g} bs {int(r['baseline_bs'])}\n"
                          f"now lr {r['lr']:g} bs {int(r['bs'])}\nfactor {f3(float(f), 2)}{word if f == f else ''}")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(title)
        ax.margins(y=0.2)
        _legend(ax, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("This study's best configuration vs the baseline study's best configuration", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def plot_architecture_comparison(res: StudyAnalysis, path: Path) -> Union[Path, str]:
    """Confirmation runs: each run's test IoU (dots) and the mean with its 95 % interval per architecture."""
    conf = res.confirmation
    arms = [a for a in conf["arms"] if a["n_scored"]] if conf else []
    if not arms:
        return "no confirmation runs with test scores"
    runs = res.confirm_df
    archs = [a["architecture"] for a in arms]
    fig, ax = plt.subplots(figsize=(max(6, 2.4 * len(arms)), 4.5))
    for i, a in enumerate(arms):
        m = config_mask(runs, a) & runs["success"] & runs["test_iou"].notna()
        ys = runs.loc[m, "test_iou"].to_numpy(float)
        color = _color(a["architecture"], archs)
        ax.scatter(i + np.linspace(-0.12, 0.12, len(ys)) if len(ys) > 1 else [i] * len(ys), ys, color=color,
                   alpha=0.6, s=25, zorder=3)
        lo, hi, mean = a["ci_low"], a["ci_high"], a["test_iou_mean"]
        if math.isfinite(lo) and math.isfinite(hi):
            ax.errorbar([i + 0.3], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=6, lw=2)
        else:
            ax.plot([i + 0.3], [mean], "o", color=color)
        ax.text(i + 0.36, mean, f" {f3(mean)}\n (n={a['n_scored']})", va="center", fontsize=8)
    ax.set_xticks(range(len(arms)), [f"{a['architecture']}\nlr {a['learning_rate']:g}, bs {int(a['batch_size'])}"
                                     for a in arms])
    ax.set_xlim(-0.5, len(arms) - 0.2)
    ax.set_ylabel("test IoU (held-out slices)")
    ax.set_title("Confirmation runs (fresh seeds): each run, and the mean with its 95 % interval")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def make_figures(res: StudyAnalysis, out_dir: Path, history_root: Optional[Path]) -> dict:
    """file name -> Path written, or the reason it was skipped."""
    out_dir = Path(out_dir)
    out = {}
    jobs = [(FIG_HEATMAPS, lambda p: plot_heatmaps(res, p)),
            (FIG_COMPREHENSIVE, lambda p: plot_comprehensive(res, p)),
            (FIG_BEST, lambda p: plot_best_configs(res, p)),
            (FIG_CURVES, lambda p: plot_training_curves(res, history_root, p))]
    if res.baseline is not None:
        jobs.append((FIG_BASELINE, lambda p: plot_baseline(res, p)))
    if res.confirmation is not None:
        jobs.append((FIG_CONFIRMATION, lambda p: plot_architecture_comparison(res, p)))
    for name, fn in jobs:
        try:
            out[name] = fn(out_dir / name)
        except Exception as err:  # noqa: BLE001 - a figure must never stop the report
            plt.close("all")
            out[name] = f"figure failed ({error_line(err, 140)})"
        if not isinstance(out[name], Path):   # not drawn now: an older PNG of that name would pass for this study's
            (out_dir / name).unlink(missing_ok=True)
    return out
