"""dynexit app: drag a compute budget and watch an early-exit classifier trade accuracy for speed.

Run from the repository root:  make app
(or: streamlit run app/streamlit_app.py --server.address 127.0.0.1)
The folder app/ is installed as the package ``dynexit_app`` (pyproject.toml), so this script and the
pages, which Streamlit runs as scripts, import it by that name.

Pages (app/views/): the budget explorer (first page), the image inspector, deadlines (anytime
prediction when inference may be interrupted), model comparison, and your own image. Model, solver and criterion are chosen in the sidebar (state.py), shared by every page.
Figures come from dynexit.viz so the notebooks show the same views.
"""

import streamlit as st

from dynexit_app import common, state

# The page icon is an emoji: Streamlit draws it as an inline SVG (a data: URL). A ":material/...:" icon would be
# fetched from fonts.gstatic.com, and the app makes no outside request (tests/app/test_browser_tour.py).
st.set_page_config(page_title="dynexit: early-exit explorer", page_icon="⏩", layout="wide")
# less empty space above the title, so a 1280 x 800 screen shows the slider, the numbers and the plots
# Metric labels and deltas wrap instead of ending in "..." on narrow columns (1024 px screens).
# The explorer's galleries are rendered only near the screen (content-visibility): a slider move redraws them,
# and while they are below the fold that work no longer delays painting the new numbers (issue 18).
st.html("""<style>[data-testid='stMainBlockContainer']{padding-top:2.5rem}
[data-testid='stMetric'] .stMarkdownEllipsis, [data-testid='stMetric'] .stMarkdownEllipsis p {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; }
[data-testid='stMetric'] div:has(> [data-testid='stMetricDelta']) { flex-wrap: wrap; row-gap: 0.2rem; }
.st-key-galleries { content-visibility: auto; contain-intrinsic-size: auto 1400px; }
</style>""")

if not common.available_models():
    common.missing_zoo_message()
    state.upload_tables(expanded=True)  # a valid pair is opened at once (its callback chooses it)
    st.stop()

name = state.sidebar().model
with common.zoo_guard(name):  # a damaged zoo file: say which and how to rebuild it (zoo's message), never a traceback
    for split in ("val", "test"):
        common.table(name, split)
problem = common.model_problem(name)
if problem:  # the explorer and the comparison work from the tables; the other pages stop (they need the model)
    st.error(f"Cannot load the weights of **{name}**: {problem}. The budget explorer and the model comparison "
             "work from its tables; the image inspector's attention maps and your own image need the weights.",
             icon=":material/error:")
page = st.navigation([
    st.Page("views/explorer.py", title="Budget explorer", icon=":material/tune:", default=True),
    st.Page("views/inspector.py", title="Image inspector", icon=":material/image_search:"),
    st.Page("views/deadlines.py", title="Deadlines", icon=":material/timer:"),
    st.Page("views/compare.py", title="Compare models", icon=":material/compare_arrows:"),
    st.Page("views/upload.py", title="Your own image", icon=":material/upload:"),
])
page.run()
