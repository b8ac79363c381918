"""The dynexit Streamlit app, installed under the import name ``dynexit_app`` (the folder is app/).

``streamlit_app.py`` (entry: sidebar, navigation), ``views/`` (one page script each), ``state.py``
(the user's choices: model, solver, criterion, budget), ``common.py`` (cached loading), ``logic.py``
(per-budget computing, no Streamlit).
"""
