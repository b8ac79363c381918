"""Your own image: convert an upload to what the model sees and run it through real early exit."""

import numpy as np
import pandas as pd
import streamlit as st

from dynexit import explain, viz
from dynexit.data import images
from dynexit_app import common, entries, state

choice = state.choices()
name, solver, criterion, unit = choice.model, choice.solver, choice.criterion, choice.unit
with common.zoo_guard(name):
    test = common.table(name, "test", unit)
    common.table(name, "val", unit)  # the solvers fit on it
st.title("Your own image")
if not entries.has_weights(name):
    st.info(f"{entries.title(name)} has tables only: running your own image needs the model's weights "
            "(NAME.safetensors + NAME.json beside its tables). Pick a model with weights in the sidebar.",
            icon=":material/info:")
    st.stop()
if common.model_problem(name):  # damaged weights: the error box above the page says which file and how to rebuild it
    st.stop()
model = common.model(name)
SIZE = int(model.input_size[0])
CLASSES, SHORT = entries.class_names(name), entries.short_names(name)
if model.in_chans != 1 or model.input_size[0] != model.input_size[1]:
    st.info(f"Your own image is converted to a square gray image; {entries.title(name)} takes {model.in_chans} x "
            f"{model.input_size[0]} x {model.input_size[1]} images. Pick a gray-image model in the sidebar.",
            icon=":material/info:")
    st.stop()
names = list(test.exit_names)
K = test.num_exits

st.markdown(f"Upload any picture of one object of the model's classes ({', '.join(CLASSES[:4])}, ...) on a plain "
            f"background. It is turned into what the model was trained on (a {SIZE} x {SIZE} gray image, light object "
            "on black) and run through the network with **real early exit**: the computation stops at the first exit "
            "that is confident enough.")

c1, c2 = st.columns([2, 1])
upload = c1.file_uploader("Image file (PNG, JPEG, GIF, BMP, TIFF, WebP; up to 25 MB and 40 megapixels)", key="upload")
polarity = c2.radio("Invert (the training images are light on black)", ["auto", "invert", "keep"], horizontal=True,
                    key="upload_invert", help="auto inverts when the background is light, e.g. a photo on white paper.")


@st.cache_data(show_spinner="Converting the image ...", max_entries=8)
def convert(data: bytes, polarity: str, size: int) -> images.PreparedImage | str:
    """What the model sees (with a preview of the decoded upload), or the reason the file is refused;
    once per upload: moving the budget slider does not decode the file again. prepare_image turns every
    decoder failure into ImageRejected, so nothing else can escape from a user's file."""
    try:
        return images.prepare_image(data, invert={"auto": "auto", "invert": True, "keep": False}[polarity], size=size)
    except images.ImageRejected as err:
        return str(err)


if upload is None:
    st.info("Upload an image to start.")
    st.stop()

prepared = convert(upload.getvalue(), polarity, SIZE)
if isinstance(prepared, str):
    st.error(f"Cannot use **{upload.name}**: {prepared}.")
    st.stop()
for warning in prepared.warnings:
    st.warning(f"**{upload.name}**: {warning}.", icon=":material/warning:")

a, b, c = st.columns([1, 1, 2])
with a:
    st.image(prepared.preview, caption=f"your image ({prepared.original_size[0]} x {prepared.original_size[1]}, "
                                       f"{prepared.original_mode}), as decoded"
                                       + (", transparent parts filled as noted" if "A" in prepared.original_mode
                                          or "transparency" in " ".join(prepared.notes) else ""))
with b:
    st.image(entries.enlarge(prepared.array), clamp=True, caption=f"what the model sees ({SIZE} x {SIZE})")
with c:
    st.markdown("**What was done**")
    st.markdown("\n".join(f"- {n}" for n in prepared.notes))

budget = state.budget_control(name, test, key="upload_budget", unit=unit)
view = common.budget_view(name, solver, criterion, budget, unit)  # cached: shared with the other pages
thresholds = view.rule.thresholds  # the fitted rule: these thresholds on its score, view.rule.criterion
show_all = st.checkbox("Also compute the exits after the one it leaves at (to compare; they do not change the exit)",
                       key="upload_all")
trace = explain.traced_early_exit(model, prepared.array, thresholds, view.rule.criterion, run_all=show_all)
k = trace.exit
pred = trace.prediction
saving = (f"{test.costs[-1] / test.costs[k]:.2f}x cheaper than the full model" if k < K - 1
          else "the whole model: it has a single exit" if K == 1
          else "the whole model: no earlier exit was confident enough")
st.markdown(f"It leaves at exit **{k + 1} ({names[k]})** after **{test.costs[k]:.1f} {unit}** of {test.costs[-1]:.1f} "
            f"({saving}), predicting **{CLASSES[pred]}** with probability {trace.probs[k].max():.0%}.")
run = list(range(trace.computed))
score_name = view.score_name
preds = [SHORT[int(p.argmax())] for p in trace.probs]
st.plotly_chart(viz.confidence_trace(trace.scores, thresholds[:trace.computed], [names[j] for j in run], k, preds,
                                     [None] * trace.computed, criterion=score_name), width="stretch", key="trace")
st.caption("Its exit score at each exit that was computed, against the thresholds at this budget. "
           + ("Exits after the one it left at were not computed." if trace.computed == k + 1 and k < K - 1 else ""))
top = np.argsort(-trace.probs[k])[:3]
st.dataframe(pd.DataFrame({"class": [CLASSES[i] for i in top], "probability": np.round(trace.probs[k][top], 3)}),
             hide_index=True)
