"""The FID comparison's report: the per-row result (:class:`Row`), whether a row follows the
Mind-Diffusion report's stated protocol, and the files (``fid.csv``, ``fid.json``, ``fid.md``,
the ``fid.png`` bar chart) with the report's own numbers beside ours as labelled context."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# The Mind-Diffusion report's FID table, as the report gives it; its GAN rows come from the SYSU course project
# github.com/Enderfga/Enderfga (horse_generation: ~1k samples vs the CIFAR-10 horse class, pytorch-fid code).
# Protocol notes say what is known.
REPORT_PROTOCOL = "report: ~1k generated vs CIFAR-10 horse (train folder), pytorch-fid"
REPORT_FIDS = (
    ("GAN", 198.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("AAE", 299.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("VAE", 327.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("DCGAN", 111.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("WGAN", 241.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("LSGAN", 172.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("DRAGAN", 184.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("BEGAN", 205.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("StyleGAN3", 100.0, "fid50k with the NVIDIA extractor (mmgen config): different N and extractor"),
    ("StyleGAN-XL", 22.0, "protocol not found"),
    ("DDPM", 219.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
    ("Wukong", 18.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
    ("Taichu", 10.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
)
REPORT_N_GEN = 1000


@dataclass
class Row:
    name: str
    label: str
    kind: str
    status: str = "ok"                 # ok | skipped: <reason>
    demo: bool = False                 # a built-in demo model, not a released checkpoint
    condition: str = ""
    sampler: str = ""
    steps: str = ""
    seed: int = 0
    n_gen: int = 0
    n_ref: int = 0
    n_ref_skipped: int = 0
    n_gen_skipped: int = 0
    reference: str = ""
    reference_path: str = ""
    generated_path: str = ""
    fid: float | None = None
    preprocess: str = ""
    method: str = ""
    extractor: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    comparable_to_report: str = ""
    gen_seconds: float = 0.0
    fid_seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)

    def metric_name(self) -> str:
        return (f"FID (mode={self.preprocess}, extractor={self.extractor}, N_gen={self.n_gen}, N_ref={self.n_ref}, "
                f"method={self.method})")



def report_comparability(row: Row, ref_manifest: dict | None) -> str:
    """Whether ``row`` follows the report's stated protocol (N_gen = 1000 generated vs the
    CIFAR-10 horse train split, pytorch-fid pre-processing with the TF Inception)."""
    why = []
    if row.n_gen != REPORT_N_GEN:
        why.append(f"N_gen={row.n_gen} (report: ~{REPORT_N_GEN})")
    m = ref_manifest or {}
    if not (m.get("dataset") == "CIFAR-10" and m.get("class") == "horse" and m.get("split") == "train"):
        why.append("reference is not the CIFAR-10 horse train split")
    elif row.n_ref != int(m.get("count", -1)) or row.n_ref_skipped:
        why.append(f"reference incomplete ({row.n_ref} of {m.get('count')} images read)")
    if row.preprocess != "pt":
        why.append(f"pre-processing {row.preprocess} (report: pytorch-fid)")
    if row.n_gen_skipped:
        why.append(f"{row.n_gen_skipped} generated image(s) unreadable")
    if why:
        return "no: " + "; ".join(why)
    return "yes: same stated protocol (1000 generated vs CIFAR-10 horse train, pytorch-fid pre-processing)"



# ----------------------------------------------------------------------------- report files
CSV_FIELDS = ("source", "row", "label", "kind", "status", "demo", "condition", "sampler", "steps", "seed", "n_gen",
              "n_ref", "n_ref_skipped", "n_gen_skipped", "reference", "fid", "preprocess", "method", "extractor",
              "comparable_to_report", "checkpoint", "checkpoint_sha256", "reference_path", "generated_path",
              "gen_seconds", "fid_seconds", "note")


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(cfg, rows: list[Row], run_dir: Path, ext_id: str, mode: str, method: str = "sqrtm") -> dict:
    from ..metrics.features import MODE_DESCRIPTIONS
    from ..metrics.frechet import METHOD_DESCRIPTIONS

    run_dir = Path(run_dir)
    files = {"csv": run_dir / "fid.csv", "md": run_dir / "fid.md", "png": run_dir / "fid.png",
             "json": run_dir / "fid.json"}
    ours = [r for r in rows if r.status == "ok"]
    any_match = any(r.comparable_to_report.startswith("yes") for r in ours)
    report = list(REPORT_FIDS) if cfg.report_context else []

    with open(files["csv"], "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d.pop("extra")
            d["source"], d["row"] = "ours", r.name
            d["fid"] = "" if r.fid is None else repr(r.fid)
            d["gen_seconds"], d["fid_seconds"] = f"{r.gen_seconds:.1f}", f"{r.fid_seconds:.1f}"
            w.writerow({k: d.get(k, "") for k in CSV_FIELDS})
        for model, fid, proto in report:
            w.writerow({"source": "report", "row": f"report-{model}", "label": f"{model} (report)", "status": "context",
                        "fid": repr(fid), "n_gen": "", "reference": "CIFAR-10 horse (per the report)",
                        "preprocess": "pytorch-fid (stated)", "extractor": "pytorch-fid (stated)",
                        "comparable_to_report": "", "note": f"not comparable unless N and protocol match: {proto}"})
    files["json"].write_text(json.dumps({"extractor": ext_id, "preprocess": mode, "method": method,
                                         "rows": [asdict(r) for r in rows]},
                                        ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8")

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# FID comparison: {cfg.name}", "",
             f"Metric: FID with **{ext_id}**, pre-processing **mode={mode}** ({MODE_DESCRIPTIONS[mode]}), "
             f"pool_3 2048-d features, Fréchet distance in float64, method={method} ({METHOD_DESCRIPTIONS[method]}). "
             f"Run {run_dir.name}, {now}.",
             "", "## Our models", "",
             "| row | model | condition | sampler / steps | seed | N_gen | reference | N_ref | FID | same protocol as the report? |",
             "|---|---|---|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        if r.status != "ok":
            continue
        model = _md(r.label) + (" **(built-in demo model)**" if r.demo else "")
        ref = _md(r.reference) + (f" ({r.n_ref_skipped} unreadable skipped)" if r.n_ref_skipped else "")
        lines.append(f"| {r.name} | {model} | {_md(r.condition)} | {_md(r.sampler)} / {_md(r.steps)} | {r.seed} | "
                     f"{r.n_gen} | {ref} | {r.n_ref} | {r.fid:.2f} | {_md(r.comparable_to_report)} |")
    if not ours:
        lines.append("| – | no row ran | | | | | | | | |")
    skipped = [r for r in rows if r.status != "ok"]
    if skipped:
        lines += ["", "Skipped rows:", ""] + [f"- **{r.name}** ({_md(r.label)}): {_md(r.status)}" for r in skipped]
    notes = [r for r in ours if r.note]
    if notes:
        lines += ["", "Notes:", ""] + [f"- **{r.name}**: {_md(r.note)}" for r in notes]
    lines += ["", f"Every FID above: mode={mode}, extractor={ext_id}, method={method}; N_gen / N_ref per row. "
                  f"With N < 2048 the covariance is singular and FID is biased upwards: compare rows only at equal N "
                  f"and against the same reference."]
    if report:
        lines += ["", "## The report's numbers (context, not comparable)", "",
                  f"From the Mind-Diffusion report's FID table ({REPORT_PROTOCOL} as far as it can be traced; "
                  f"the GAN rows trace to github.com/Enderfga/Enderfga, horse_generation). "
                  + ("A row above follows the same stated protocol; the report's own protocol details remain "
                     "unverified." if any_match else
                     "No row above follows that protocol (N_gen = 1000 vs the CIFAR-10 horse train split, "
                     "pytorch-fid), so these numbers are **not comparable** with ours."), "",
                  "| model (report) | FID (report) | protocol | comparable with our rows |", "|---|---:|---|---|"]
        for model, fid, proto in report:
            comp = ("same stated protocol, unverified" if any_match and "course repo" in proto
                    else "not comparable")
            lines.append(f"| {model} | {fid:g} | {_md(proto)} | {comp} |")
    files["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_report(rows, report, files["png"], f"{cfg.name}: FID (mode={mode}, {ext_id}, method={method})", any_match)
    return files


def plot_report(rows: list[Row], report, path: Path, title: str, any_match: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r.status == "ok" and r.fid is not None and math.isfinite(r.fid)]
    labels, values, colors, hatches = [], [], [], []
    for r in ours:
        labels.append(f"{r.name}{' [demo]' if r.demo else ''} (N={r.n_gen} vs {r.n_ref})")
        values.append(r.fid)
        colors.append("#d98c2b" if r.demo else "#2b6cd9")
        hatches.append("")
    for model, fid, _ in report:
        labels.append(f"report: {model}")
        values.append(fid)
        colors.append("#bbbbbb")
        hatches.append("//")
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * n))
    y = np.arange(len(labels))[::-1]
    bars = ax.barh(y, values, color=colors, edgecolor="#444444", linewidth=0.5)
    for b, h in zip(bars, hatches):
        b.set_hatch(h)
    vmax = max(values) if values else 1.0
    for yi, v in zip(y, values):
        ax.text(v + vmax * 0.01, yi, f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("FID (lower is better)")
    ax.set_xlim(0, vmax * 1.15 if values else 1)
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color="#2b6cd9", label="ours"), Patch(color="#d98c2b", label="ours, built-in demo model")]
    if report:
        handles.append(Patch(facecolor="#bbbbbb", hatch="//", edgecolor="#444444",
                             label="report (same stated protocol, unverified)" if any_match
                             else "report (not comparable: different N / reference / protocol)"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / n - 0.08), ncol=3,
              frameon=False)
    if not values:
        ax.text(0.5, 0.5, "no FID computed (all rows skipped)", transform=ax.transAxes, ha="center")
    fig.savefig(path, dpi=110, bbox_inches="tight",
                metadata={"Title": title, "Description": " | ".join(f"{lab}: {v:.2f}" for lab, v in zip(labels, values))})
    plt.close(fig)
