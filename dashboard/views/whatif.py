"""What if these units were removed? A set of units, built from anywhere (``layer:unit``, the unit page, the
explorer's table, a class's halving set), kept in the URL, removed together live on the run's checkpoint,
with the change and its paired 95% interval overall and per class."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from dashboard import cached, nav, ui, unit_charts, whatif_panel
from dashboard.state import one, parse_run
from warehouse.text import md_code

PAGE = "whatif"
S = st.session_state


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 1e-4 else "p < 1e-4"


def read_url() -> tuple[str | None, list[str] | None, list[str]]:
    """A new URL's run, units and split (into the session); the notices for values left out."""
    if not ui.url_is_new(PAGE):
        return None, None, []
    run, notices = parse_run(st.query_params)
    text = one(st.query_params, "units")
    units = None
    if text is not None:
        units, more = whatif_panel.parse_units(text)
        notices += more
    split = one(st.query_params, "split")
    if split is not None:
        if split in whatif_panel.SPLITS:
            S["wi-split"] = split
        else:
            notices.append(f"{md_code('split=' + split[:20])} is ignored: choose eval or train.")
    return run, units, notices


def check(units: list[str], sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """The units this run has, and a notice for each it does not."""
    kept, notices = [], []
    for label in units:
        layer, _, unit = label.rpartition(":")
        if layer not in sizes:
            notices.append(f"{md_code(label)} is left out: the run has no layer {md_code(layer)} (layers: "
                           f"{', '.join(map(md_code, sizes))}).")
        elif not 0 <= int(unit) < sizes[layer]:
            notices.append(f"{md_code(label)} is left out: layer {md_code(layer)} has units 0 to {sizes[layer] - 1}.")
        else:
            kept.append(label)
    return kept, notices


def _add() -> None:
    units, notices = whatif_panel.parse_units(S.get("wi-add", ""))
    S["wi-set"] = list(dict.fromkeys([*S.get("wi-set", []), *units]))
    S["wi-add"], S["wi-add-notices"] = "", notices


def main() -> None:
    st.title("What if these units were removed?")
    root, fp, runs = ui.page_runs()
    run_ids = [r.run_id for r in runs]
    url_run, url_units, notices = read_url()
    run = ui.pick_run(run_ids, url_run, "wi-run")
    summary = cached.layer_summary(root, fp, run)
    sizes = dict(zip(summary["layer"], summary["n_units"].astype(int)))
    if url_units is not None:
        S["wi-set"] = url_units
    elif "wi-set" not in S or S.get("wi-set-run") != run:
        S["wi-set"] = whatif_panel.current(run)
    S["wi-set"], more = check(S["wi-set"], sizes)
    notices += more + S.pop("wi-add-notices", [])
    nav.notices(notices)
    st.caption("Clamps the units to zero together and re-evaluates the trained network on the run's evaluation "
               "(or training) set. Add units by name here, from a unit page (*Add to what-if*), from the explorer's "
               "table or from a class's halving set; the set is kept in the link.")
    c1, c2 = st.columns([3, 1])
    c1.text_input("Add units (layer:unit, comma-separated)", key="wi-add", on_change=_add,
                  placeholder="e.g. fc1:3, conv2:5")
    c2.radio("Measured on", whatif_panel.SPLITS, horizontal=True, key="wi-split")
    picked = st.multiselect("Units removed together (remove one with its ×)", S["wi-set"], key="wi-set")
    S["wi-set-run"], S["wi-units"], S["wi-units-run"] = run, list(picked), run
    split = S["wi-split"]
    ui.write_url(PAGE, whatif_panel.params(run, list(picked), split))
    if not picked:
        st.info("No units chosen: add some above, e.g. `fc1:3`.")
        return
    st.markdown("Units: " + ", ".join(f"[{label}]({nav.unit_url(run, *label.rsplit(':', 1))})" for label in picked))
    result = whatif_panel.run(root, run, tuple(picked), split)
    if isinstance(result, str):
        st.error(result)
        return
    s, per_class = result
    m = st.columns(4)
    m[0].metric("accuracy", f"{s['accuracy']:.4f}", f"{s['acc_delta']:+.4f}")
    m[0].caption(f"change, 95% interval [{s['acc_lo']:+.4f}, {s['acc_hi']:+.4f}]; McNemar {_p(s['acc_p'])}")
    m[1].metric("loss", f"{s['loss']:.4f}", f"{s['loss_delta']:+.4f}", delta_color="inverse")
    m[1].caption(f"change, 95% interval [{s['loss_lo']:+.4f}, {s['loss_hi']:+.4f}]; {_p(s['loss_p'])}")
    m[2].metric("flips right→wrong / wrong→right", f"{int(s['n_hurt'])} / {int(s['n_helped'])}")
    m[3].metric("units removed", s["n_units"])
    st.caption(f"Intervals are paired over the {s['n_examples']:,} {split} examples (each example's own change, "
               "t interval); the accuracy p is the exact McNemar test of the flips.")
    bars = per_class.assign(class_name=unit_charts.class_names(per_class["class_name"]))
    fig = px.bar(bars, x="class_name", y="acc_delta", title="Accuracy change per class (removed - intact)",
                 color_discrete_sequence=[unit_charts.COLORS["accuracy change"]])
    unit_charts.class_axis(fig, bars["class_name"])
    fig.update_yaxes(title_text="accuracy change (fraction)")
    st.plotly_chart(fig, key="wi-bars")
    ui.downloads(f"whatif-{run}", "dl-whatif", frame=per_class)


main()
