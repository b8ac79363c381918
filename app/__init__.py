"""The dynexit Streamlit app: pages in app/views/, shared glue in common.py, computing in logic.py."""
